"""The two-daemon run (tests/contract/twodaemons.py), short: 64 connections per daemon for a few
seconds on one PostgreSQL database. `make stress` runs it for 60 s."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Stores
from tests.contract.twodaemons import two_daemon_run
from tests.daemon.harness import short_tempdir

SECONDS = 3.0


def test_two_daemons_on_one_database_lose_nothing_and_agree(stores: Stores, tmp_path: Path) -> None:
    with short_tempdir("tl2") as base:
        result = two_daemon_run(stores.new("postgresql"), base, tmp_path, SECONDS)
    print(result.line())
    assert min(result.acked) > 0
    assert result.events >= sum(result.acked)
