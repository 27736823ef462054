"""Two daemons x 64 connections on one PostgreSQL database for 60 s (issue 20's must-show run):
`make stress` (PG_SECONDS=N changes the duration). One summary line:

    pg-two-daemons: seconds=60 conns=64x2 acked=N+N (R/s) events=N lost=0
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Stores
from tests.contract.twodaemons import two_daemon_run
from tests.daemon.harness import short_tempdir
from tests.stores import stress_seconds
from tests.stress.rounds import summary


@pytest.mark.stress
def test_two_daemons_for_a_minute(stores: Stores, tmp_path: Path) -> None:
    with short_tempdir("tl2") as base:
        result = two_daemon_run(stores.new("postgresql"), base, tmp_path, stress_seconds(60.0))
    summary(result.line())
    assert min(result.acked) > 0
