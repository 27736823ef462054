"""The verifier inside a real `timelined serve`: the boot run, a drift made with the `sqlite3`
program noticed by the watcher alone, Admin.Repair, a clean run after it, and a state equal to
a replay of the log once the daemon has stopped."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemon.harness import DaemonProcess, short_tempdir
from tests.helpers import dump_state, replay_dump
from tests.verifier.test_drift import query, sqlite3_cli
from timelined.client import Client


def wait_for(fetch: Callable[[], Any], accept: Callable[[Any], bool], seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = fetch()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {value}")
        time.sleep(0.05)


def test_drift_in_a_running_daemon() -> None:
    with short_tempdir() as base:
        daemon = DaemonProcess(base, log={"fsync": "off"}, verify={"on_boot": True})
        with daemon, Client(daemon.socket_path, timeout=60) as client:
            conv = client.create_conversation("audited")
            for n in range(40):
                client.append_block(conv.root_context_id, "user", f"message {n}")
            status = wait_for(
                lambda: client.get_status().verify, lambda v: v.get("runs", 0) >= 1, 20
            )
            assert status["last_state"] == "ok", status
            # A read commits the answered rows (their open transaction holds the write lock
            # the sqlite3 CLI below needs, for up to the writer's COMMIT_DELAY_S).
            client.list_blocks(conv.root_context_id)

            db = daemon.state_dir / "state.db"
            block_id = str(query(db, "SELECT id FROM blocks ORDER BY seq LIMIT 1 OFFSET 7")[0][0])
            sqlite3_cli(db, f"UPDATE blocks SET content = 'forged' WHERE id = '{block_id}'")
            report = wait_for(
                client.get_verify_report,
                lambda r: r is not None and r["trigger"] == "data_version",
                10,
            )
            assert report["state"] == "drift"
            (diff,) = report["differences"]
            assert (diff["entity"], diff["id"], diff["kind"]) == ("block", block_id, "changed")
            assert client.get_status().verify["last_state"] == "drift"
            assert f"block {block_id} (key" in daemon.log()  # the journal's warning names it

            repaired = client.repair()
            assert repaired is not None and Path(repaired["quarantined_to"]).exists()
            client.append_block(conv.root_context_id, "user", "after the repair")
            clean = client.verify(wait=True).result
            assert clean is not None and clean["state"] == "ok", clean
        state_dir = daemon.state_dir
        assert dump_state(state_dir / "state.db") == replay_dump(
            state_dir / "log", base / "replay.db"
        )
