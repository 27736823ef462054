"""Shared checks for the protocol tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_event_loop_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """asyncio logs (rather than raises) errors in callbacks, e.g. a cancelled wait racing its
    reader callback; such an error is a bug of ours even when the test otherwise passes."""
    yield
    records = caplog.get_records("setup") + caplog.get_records("call") + caplog.records
    loop_errors = [r for r in records if r.name == "asyncio" and r.levelname == "ERROR"]
    assert not loop_errors, [r.getMessage() for r in loop_errors]
