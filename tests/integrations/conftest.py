from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.daemon.harness import DaemonProcess, serving


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with serving() as proc:
        yield proc
