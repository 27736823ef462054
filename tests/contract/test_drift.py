"""Verifier drift through a real daemon, on each backend: the state changed behind the daemon's
back (by another program: the sqlite3 CLI, or another PostgreSQL session) is reported by
Admin.Verify naming each entity and id; Admin.Repair rebuilds the state from the log, the next
run is clean, and the state equals a replay of the log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.daemon.harness import serving
from tests.stores import Store
from tests.verifier.test_drift import Drift, drift_cases
from timelined.client import Client

# The entity cases both backends share (meta's row is also PostgreSQL's head row that orders the
# daemons' batches: changing its last_seq is another test's matter).
CASES = 4


def reported(report: dict[str, Any], case: Drift) -> bool:
    return any(
        (d["entity"], d["id"], d["kind"]) == (case.entity, case.id, case.kind)
        for d in report["differences"]
    )


def test_drift_is_named_repaired_and_clean_again(store: Store, tmp_path: Path) -> None:
    with (
        serving(**store.overrides(), log={"fsync": "off"}) as daemon,
        Client(daemon.socket_path, timeout=60) as tl,
    ):
        conv = tl.create_conversation("audited")
        side = tl.spawn_sidebar(conv.root_context_id, "aside")
        for n in range(30):
            tl.append_block(conv.root_context_id if n % 2 else side.id, "user", f"message {n}")
        first = tl.verify(wait=True).result
        assert first is not None and first["state"] == "ok", first

        # A read through the daemon commits the answered rows still waiting for their COMMIT
        # (which would hold the write lock the other program needs, for up to COMMIT_DELAY_S).
        tl.list_blocks(side.id)
        cases = drift_cases(lambda sql: store.query(sql, daemon.state_dir))[:CASES]
        # One transaction: a run the change starts sees all of it or none.
        store.execute("BEGIN; " + "; ".join(c.sql for c in cases) + "; COMMIT;", daemon.state_dir)
        report: dict[str, Any] | None = None
        for _ in range(5):  # a run under way when the change committed may not have seen it
            report = tl.verify(wait=True).result
            if report is not None and all(reported(report, c) for c in cases):
                break
        assert report is not None and report["state"] == "drift", report
        for case in cases:
            assert reported(report, case), (case.name, report["differences"])
        assert tl.get_status().verify["last_state"] == "drift"

        assert tl.repair() is not None
        tl.append_block(conv.root_context_id, "user", "after the repair")
        clean = tl.verify(wait=True).result
        assert clean is not None and clean["state"] == "ok", clean
        tl.list_blocks(side.id)  # the last append committed: the dump reads the file itself
        assert store.dump(daemon.state_dir) == store.replay(daemon.state_dir, tmp_path)
