"""The verifier's file watching in a real `timelined serve`: the daemon's own appends wake it
not once (the inotify mask leaves out IN_MODIFY, the only event they raise), while changes made
by anyone else are still found: an append that closes its file at once, an append through a
file kept open by the once-a-second sweep, a commit through another SQLite connection by the
data_version poll."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import DaemonProcess, short_tempdir
from tests.verifier.test_daemon import wait_for
from timelined.client import Client
from timelined.errors import StorageError
from timelined.verifier.inotify import IN_CLOSE_WRITE, OUTSIDE_CHANGES, Inotify

FOREIGN_LINE = b'{"seq":999999,"not":"the writer\'s"}\n'


def wakeups(client: Client) -> int:
    return int(client.get_status().verify["watch_wakeups"])


def current_segment(state_dir: Path) -> Path:
    return sorted((state_dir / "log").glob("*.jsonl"))[-1]


@contextmanager
def serving() -> Iterator[tuple[DaemonProcess, Client, str]]:
    """A daemon with a conversation; the watcher has taken its baseline when this yields.

    Started twice: the first start creates the log's first segment (an IN_CREATE the watcher
    rightly wakes for, once), so that the second one's count starts from 0 with no rotation due.
    """
    with short_tempdir("tlw") as base:
        daemon = DaemonProcess(base)
        with daemon, Client(daemon.socket_path, timeout=30) as client:
            root = client.create_conversation("watched").root_context_id
            client.append_block(root, "user", "first")
        with daemon, Client(daemon.socket_path, timeout=30) as client:
            time.sleep(0.5)  # the watcher's baseline (taken after READY)
            yield daemon, client, root


def found_by_watch(client: Client, seconds: float) -> dict[str, Any]:
    report: dict[str, Any] = wait_for(
        client.get_verify_report,
        lambda r: r is not None and str(r["trigger"]).startswith("watch:log/"),
        seconds,
    )
    return report


def test_the_mask_leaves_out_writes_to_an_open_file(tmp_path: Path) -> None:
    """The kernel's part of the contract: writing to a file kept open raises nothing in the
    mask; closing it does."""
    inotify = Inotify.open()
    try:
        inotify.add_watch(tmp_path, OUTSIDE_CHANGES)
        target = tmp_path / "segment"
        target.write_bytes(b"x")
        inotify.read()  # the create and the close
        with target.open("ab") as fh:
            for _ in range(100):
                fh.write(b"line\n")
                fh.flush()
            time.sleep(0.05)
            assert inotify.read() == []
        (event,) = inotify.read()
        assert event.name == "segment" and event.mask & IN_CLOSE_WRITE
    finally:
        inotify.close()


@pytest.mark.parametrize("appends", [20, 200])
def test_own_appends_wake_the_watcher_not_once(appends: int) -> None:
    with serving() as (_daemon, client, root):
        before = wakeups(client)
        for n in range(appends):
            client.append_block(root, "user", f"block {n}")
        time.sleep(1.5)  # a wake-up, and a sweep, would have happened by now
        status = client.get_status().verify
        assert status["watch_wakeups"] == before == 0, status
        assert status["runs"] == 0, status  # nor did the sweep or the poll find anything
        metrics = client.get_metrics()
        assert "timelined_verify_watch_wakeups_total 0\n" in metrics


def test_an_outside_append_that_closes_is_found_at_once() -> None:
    with serving() as (daemon, client, root):
        client.append_block(root, "user", "second")
        segment = current_segment(daemon.state_dir)
        started = time.monotonic()
        with segment.open("ab") as fh:
            fh.write(FOREIGN_LINE)
        report = found_by_watch(client, 10)
        took = time.monotonic() - started
        assert report["trigger"] == f"watch:log/{segment.name}"
        assert "bytes were added" in daemon.log()
        assert wakeups(client) >= 1
        # Debounce 0.2 s, settle 0.05 s and a run of milliseconds: well under the sweep's
        # second on a quiet machine; the bound leaves room for a loaded one.
        assert took < 3, took


def test_an_outside_append_to_a_file_kept_open_is_found_by_the_sweep() -> None:
    with serving() as (daemon, client, root):
        segment = current_segment(daemon.state_dir)
        with segment.open("ab") as fh:
            fh.write(FOREIGN_LINE)
            fh.flush()  # written, not closed: no event the writer's appends do not raise
            started = time.monotonic()
            # The writer reserves space at its logical end: it refuses to write over bytes it
            # did not write (issue 17), instead of appending after them as O_APPEND did.
            with pytest.raises(StorageError):
                client.append_block(root, "user", "after the stranger's line")
            report = found_by_watch(client, 10)
            took = time.monotonic() - started
        assert report["trigger"] == f"watch:log/{segment.name}"
        assert "bytes were added" in daemon.log()
        assert took < 5, took


def test_a_commit_through_another_sqlite_connection_is_found() -> None:
    with serving() as (daemon, client, root):
        block_id = client.append_block(root, "user", "to be forged").block.id
        conn = sqlite3.connect(daemon.state_dir / "state.db", timeout=10)
        try:  # kept open: found by the data_version poll, whatever the file events
            with conn:
                conn.execute("UPDATE blocks SET content = 'forged' WHERE id = ?", (block_id,))
            report = wait_for(
                client.get_verify_report,
                lambda r: r is not None and r["trigger"] == "data_version",
                10,
            )
        finally:
            conn.close()
        assert report["state"] == "drift", report
        assert any(d["id"] == block_id for d in report["differences"]), report
