"""Fixtures: one real daemon subprocess shared by the module tests of tests/daemon.

Other suites reuse the harness: `from tests.daemon.harness import DaemonProcess, ...`
(see harness.py), or this fixture by importing it into their conftest:
`from tests.daemon.conftest import daemon  # noqa: F401`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.daemon.harness import DaemonProcess, serving
from timelined.client import Client


@pytest.fixture(scope="session")
def daemon() -> Iterator[DaemonProcess]:
    """A real `timelined serve` on a fresh state dir; SIGTERM at the end must exit 0."""
    with serving(limits={"max_message_bytes": 1024 * 1024}) as proc:
        yield proc


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[Client]:
    with Client(daemon.socket_path, timeout=30) as c:
        yield c
