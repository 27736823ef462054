"""The verifier's children give way to the daemon: SCHED_IDLE, or nice 10 where it is refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import os, sys
from timelined.verifier import worker
worker._settle(None)
print(os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
"""

REFUSED = (
    """
import os
def refuse(*args):
    raise PermissionError(1, "Operation not permitted")
os.sched_setscheduler = refuse  # as systemd's SystemCallFilter=~@resources would answer
"""
    + PROBE
)


def probe(code: str) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="no SCHED_IDLE on this platform")
def test_a_worker_runs_in_sched_idle() -> None:
    policy, _ = probe(PROBE)
    assert policy == os.SCHED_IDLE


@pytest.mark.skipif(
    os.sched_getscheduler(0) != os.SCHED_OTHER,
    reason="this test runs in a non-default scheduling class, which its child would inherit",
)
def test_a_worker_falls_back_to_nice_10_when_the_scheduler_call_is_refused() -> None:
    before = os.getpriority(os.PRIO_PROCESS, 0)
    policy, nice = probe(REFUSED)
    assert policy == os.SCHED_OTHER
    assert nice == min(before + 10, 19)


def test_a_worker_takes_the_stop_signals_the_daemon_blocks() -> None:
    """The daemon serves with SIGTERM/SIGINT/SIGHUP blocked and its children inherit the mask:
    a worker unblocks them, and a SIGTERM already pending then runs its handler (exit 143)."""
    code = """
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
os.kill(os.getpid(), signal.SIGTERM)  # pending while blocked, as from a stop during start-up
from timelined.verifier import worker
worker._settle(None)
print("not stopped")
"""
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 128 + 15, (run.returncode, run.stdout, run.stderr)
    assert "not stopped" not in run.stdout
