"""The memory-abuse round of issue 18 for ROUNDS rounds: `make stress ROUNDS=N`.

Several hostile clients at once each round (non-reading watchers, huge searches, unread pages,
oversized frames, refused big calls, slow readers) while a writer keeps appending; the suite
runs two rounds (tests/daemon/test_memory_abuse.py). One summary line:

    memory: idle_mib=N peak_mib=N bound_mib=N connections=N appends=N append_failures=0
"""

from __future__ import annotations

import pytest

from tests.daemon.harness import DaemonProcess, short_tempdir
from tests.daemon.memory_abuse import LIMITS, abuse_rounds, fill_log
from tests.stress.rounds import stress_rounds, summary


@pytest.mark.stress
def test_memory_abuse_for_rounds() -> None:
    with short_tempdir("tls") as base, DaemonProcess(base, limits=LIMITS) as d:
        assert d.proc is not None
        ctx = fill_log(d.socket_path, 60, prefix="hugetoken")
        result = abuse_rounds(d.socket_path, d.proc.pid, ctx, stress_rounds())
    summary(result.line())
    assert not result.append_failures, result.append_failures[:5]
    assert result.appends > 0, "the writer must never be locked out"
    assert result.peak_mib < result.bound_mib, result.line()
