"""Fixtures: one fuzzed daemon (a real `timelined serve` with a canary client) per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.campaign import FuzzTarget, fuzz_target


@pytest.fixture(scope="module")
def target() -> Iterator[FuzzTarget]:
    """A daemon under fuzzing: seeded world, canary running; SIGTERM at the end must exit 0."""
    with fuzz_target() as t:
        yield t
