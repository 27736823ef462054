"""`timelinectl verify --wait` and `verify-report` say what drifted, as `timelined verify` does.

A real daemon (its own: the drift would disturb the shared one), its state database edited
behind its back with sqlite3, and the installed `timelinectl` run as a subprocess."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.daemon.harness import serving
from timelined.client import Client

TIMELINECTL = Path(sys.executable).with_name("timelinectl")


def _ctl(socket: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TIMELINECTL), "--socket", str(socket), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_each_difference_names_its_fields_and_both_values() -> None:
    with serving() as daemon:
        with Client(daemon.socket_path, timeout=30) as client:
            conv = client.create_conversation("Drift")
            side = client.spawn_sidebar(conv.root_context_id, "a sidebar")
        db = sqlite3.connect(daemon.state_dir / "state.db")
        with db:
            db.execute("UPDATE contexts SET status = 'archived' WHERE id = ?", (side.id,))
        db.close()

        expected = (
            f"context {side.id} changed: status is 'archived' in the state, 'active' in the log"
        )
        for argv in (["verify", "--wait"], ["verify-report"]):
            run = _ctl(daemon.socket_path, *argv)
            assert run.returncode == 1, (argv, run.stdout, run.stderr)
            lines = run.stdout.splitlines()
            assert f"difference  {expected}" in lines, (argv, run.stdout)
            # Not the dict's scalars, which left the fields out: "detail=None".
            assert "detail=None" not in run.stdout, run.stdout

        repaired = _ctl(daemon.socket_path, "repair")  # so that the daemon stops cleanly
        assert repaired.returncode == 0, repaired.stderr
