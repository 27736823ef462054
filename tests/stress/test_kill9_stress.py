"""kill -9 under 16 writers for ROUNDS rounds: `make stress ROUNDS=N`.

The torture of tests/recovery/test_real_daemon.py (its `kill9_torture`), run for N rounds
instead of 20. One summary line:

    kill9: trials=N acknowledged_checked=N lost=0 failed_boots=0
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.daemon.harness import short_tempdir
from tests.recovery.test_real_daemon import WRITERS, kill9_torture
from tests.stress.rounds import stress_rounds, summary


@pytest.mark.stress
def test_kill9_torture_for_rounds(tmp_path: Path) -> None:
    rounds = stress_rounds()
    seed = int(os.environ.get("TIMELINED_SEED", "9"))
    started = time.monotonic()
    with short_tempdir("tlk") as base:
        result = kill9_torture(base, tmp_path, rounds, seed)
    summary(result.line())
    print(f"kill9 detail: rounds={rounds} seed={seed} seconds={time.monotonic() - started:.0f}")
    assert not result.problems, "\n".join(result.problems[:20])
    assert result.trials == rounds and result.lost == 0 and result.failed_boots == 0
    assert result.acknowledged_checked > rounds * WRITERS, "the writers must have made progress"
