"""Connection exhaustion: a writer is never locked out while hostile peers churn.

Against one real daemon with max_connections 32 and the defaults (2 reserved for writers, 8 per
uid): uids `[auth]` refuses reconnect as fast as they can, read-only uids take every slot they
may and hold it (three call and hold, a fourth connects and stays silent); meanwhile root opens
a fresh connection for each append, and every append must succeed. The short version runs in
`make test`; `make stress ROUNDS=N` runs it for N seconds (at least 5) with more churners. One
summary line:

    connections: seconds=N refused_connects=N writer_appends=N writer_failures=0 worst_ms=N
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from typing import Any

import pytest

from tests.daemon.harness import READ_ONLY_GID, STRANGER, DaemonProcess, short_tempdir
from tests.daemon.test_fairness import READERS, peer
from tests.stress.rounds import stress_rounds, summary
from timelined.client import Client

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run peers as other uids")

# Refused uids besides STRANGER: unknown to [auth], in no allowed group.
REFUSED = (STRANGER, 65529, 65528, 65527)
WORST_APPEND_S = 2.0
LIMITS = {"max_connections": 32}
PER_UID = 8  # the default share at 32: a quarter


def connection_abuse(seconds: float, churners: int) -> dict[str, Any]:
    with (
        short_tempdir("tlca") as base,
        DaemonProcess(base, limits=LIMITS) as daemon,
        ExitStack() as stack,
    ):
        with Client(daemon.socket_path, timeout=10) as c:
            ctx = c.create_conversation("the writer").root_context_id
        time.sleep(0.3)  # that connection is gone before the readers fill their share
        holders = [
            stack.enter_context(peer(daemon, uid, READ_ONLY_GID, PER_UID, "call"))
            for uid in READERS[:3]
        ]
        held = sum(r == "ok" for h in holders for r in h.json())
        silent = stack.enter_context(
            peer(daemon, READERS[3], READ_ONLY_GID, PER_UID, "silent", seconds + 10)
        )
        assert silent.line() == "opened"
        hostile = [
            stack.enter_context(peer(daemon, uid, uid, 0, "churn", seconds))
            for uid in (REFUSED * churners)[:churners]
        ]
        appends = failures = 0
        worst = 0.0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                with Client(daemon.socket_path, timeout=10) as writer:  # a new connection each
                    writer.append_block(ctx, "user", f"append {appends}")
                appends += 1
            except Exception as exc:
                failures += 1
                print(f"writer refused: {exc!r}")
            worst = max(worst, time.monotonic() - started)
        refused = 0
        outcomes: dict[str, int] = {}
        for h in hostile:
            report = h.json(seconds + 30)
            refused += report["made"]
            for name, n in report["outcomes"].items():
                outcomes[name] = outcomes.get(name, 0) + n
        with Client(daemon.socket_path, timeout=10) as c:
            status = c.get_status()
    return {
        "held": held,
        "refused": refused,
        "outcomes": outcomes,
        "appends": appends,
        "failures": failures,
        "worst_s": worst,
        "last_seq": status.last_seq,
        "by_reason": status.connections.rejected_by_reason,
    }


def check(result: dict[str, Any], seconds: float) -> None:
    line = (
        f"connections: seconds={seconds:.0f} refused_connects={result['refused']} "
        f"writer_appends={result['appends']} writer_failures={result['failures']} "
        f"worst_ms={result['worst_s'] * 1000:.0f}"
    )
    summary(line)
    print(f"connections detail: {result}")
    assert result["held"] == 3 * PER_UID, result
    assert result["failures"] == 0, result
    assert result["appends"] > seconds, result  # several a second, each on a new connection
    assert result["worst_s"] < WORST_APPEND_S, result
    assert set(result["outcomes"]) == {"PermissionDenied"}, result
    assert result["by_reason"]["admission"] >= result["refused"] > 0, result


def test_a_writer_is_never_locked_out_short() -> None:
    check(connection_abuse(3, 2), 3)


@pytest.mark.stress
def test_a_writer_is_never_locked_out_for_rounds() -> None:
    seconds = max(5, stress_rounds())
    check(connection_abuse(seconds, 4), seconds)
