"""The state database's WAL checkpoints, on a thread and a connection of their own.

SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL past
`wal_autocheckpoint` pages: on the writer's thread, in the commit a read may be waiting for (at
64 appending connections ~3 % of the commits took 8-29 ms for it; docs/performance.md, "Reads
while clients append"). The writer's connection turns it off (`wal_autocheckpoint = 0`) and a
`Checkpointer` runs the same PASSIVE checkpoint every `interval_s` instead. A PASSIVE
checkpoint copies the committed frames that no reader needs back into the database file and
never waits for the writer or a reader; the writer restarts the WAL at its next write once
everything is copied, as it did after its own checkpoints.

Contract:
- `start()` once; `close()` stops the thread and closes its connection (idempotent, blocking:
  it waits for a checkpoint in progress). The writer's final TRUNCATE checkpoint comes after.
- `suspend()` (blocking, the same wait) and `resume()`: no checkpoint in between, and the
  connection is reopened afterwards: a repair swaps the database file meanwhile.
- A failed checkpoint is logged and counted, never raised: the WAL only grows until the next
  one succeeds. `wal_frames` is the WAL's size in frames at the last successful run.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL_S = 1.0


class Checkpointer:
    """PASSIVE WAL checkpoints of one SQLite database every `interval_s` (module docstring)."""

    def __init__(self, path: Path, interval_s: float | None = None) -> None:
        self.path = path
        self.interval_s = CHECKPOINT_INTERVAL_S if interval_s is None else interval_s
        self.runs = 0
        self.failures = 0
        self.wal_frames = 0
        self._conn: sqlite3.Connection | None = None
        # Held by a checkpoint, by `suspend()` and by `close()`: neither returns during one.
        self._lock = threading.Lock()
        self._suspended = False
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="timelined-checkpointer")
        self._thread.daemon = True  # never keeps a dying process alive; close() joins it

    def start(self) -> None:
        """Checkpoint once (blocking), then start the thread. Once now, at the engine's start:
        a connection's first checkpoint opens the WAL file, and SQLite running as root chowns
        it to the database's owner then (an IN_ATTRIB), which the verifier's file watcher,
        started later, would take for someone else's change."""
        with self._lock:
            self._run()
        self._thread.start()

    def _main(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.checkpoint()

    def checkpoint(self) -> bool:
        """Run one PASSIVE checkpoint now (unless suspended or closed); whether it ran."""
        with self._lock:
            if self._suspended or self._closed:
                return False
            return self._run()

    def _run(self) -> bool:
        """One PASSIVE checkpoint (under the lock); whether it ran."""
        conn = self._connect()
        if conn is None:
            return False
        try:
            row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            self._failed(exc)
            return False
        self.runs += 1
        self.wal_frames = int(row[1])
        return True

    def _connect(self) -> sqlite3.Connection | None:
        """The connection, opened if it is not (under the lock); None: that failed."""
        if self._conn is None:
            try:
                # mode=rw: never create the file (a repair's swap, an operator's hands).
                self._conn = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=rw",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.Error as exc:
                self._failed(exc)
        return self._conn

    def _failed(self, exc: sqlite3.Error) -> None:
        self.failures += 1
        log.warning("the state database's WAL checkpoint failed (retried): %s", exc)
        self._close_conn()

    def suspend(self) -> None:
        """No checkpoint until `resume()`; the connection is closed (the file may be swapped)."""
        with self._lock:
            self._suspended = True
            self._close_conn()

    def resume(self) -> None:
        with self._lock:
            self._suspended = False

    def close(self) -> None:
        """Stop the thread, close the connection."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            self._closed = True
            self._close_conn()

    def _close_conn(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.close()
            except sqlite3.Error as exc:  # nothing is pending on it: only its handle is lost
                log.warning("closing the checkpoint connection failed: %s", exc)
