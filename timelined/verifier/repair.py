"""Repair: rebuild the state database from the log and swap it in while the daemon serves.

1. Replay the log up to the engine's committed head into STATE_DIR/tmp/repair-<time>.db, in a
   child process (the same `apply`, every line's hash checked). Writes go on meanwhile.
2. Pause the writer (between batches) and, paused:
   roll the new file forward by the events committed during step 1; fsync it; checkpoint and
   close the old write connection; move state.db (+ -wal, -shm) to
   STATE_DIR/quarantine/state-<time>.db; rename the new file into place; fsync the directory;
   open it as the write connection and hand it to the engine.
3. Resume writes; reopen the read connections on the new file; write a repair report
   (reports/repair-<time>.json, a recovery Report of kind "repair").

Writes wait only for step 2. Nothing here writes the log.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio

from timelined import __version__
from timelined.api.reports import PhaseTime, Rebuild, Report
from timelined.api.verify import RepairResult
from timelined.auditlog.atomic import fsync_path
from timelined.auditlog.fileops import OS_FILEOPS
from timelined.errors import LogDamaged, StorageError
from timelined.ids import utc_now
from timelined.recovery.report import report_id as recovery_report_id
from timelined.recovery.report import write_report
from timelined.state.db import open_scratch, open_write, read_meta
from timelined.state.replay import rebuild, roll_forward
from timelined.verifier.protocol import Failed, Message, RebuildDone
from timelined.verifier.replay import remove_db
from timelined.verifier.runner import run_child

if TYPE_CHECKING:
    from timelined.config import Config
    from timelined.writer.engine import Engine

log = logging.getLogger("timelined.verifier")
T = TypeVar("T")
InThread = Callable[[Callable[[threading.Event], T]], Awaitable[T]]


def _failed(reason: str, path: Path | str = "state.db", errno: int = 0) -> StorageError:
    """A repair that could not complete: the daemon keeps the state database it had.

    Sent as io.timelined.Admin.StorageError (Repair is an Admin method); `errno` is 0 unless
    the failure was an OS error.
    """
    return StorageError(str(path), errno, f"repair failed, the current state stays: {reason}")


def _stamp(ts: str) -> str:
    return ts.replace(":", "").replace("-", "").replace(".", "")


def _move_db(source: Path, target: Path) -> list[tuple[Path, Path]]:
    """Rename a database and its -wal/-shm; returns the moves made (to undo them)."""
    moved = []
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{source}{suffix}")
        if src.exists():
            dst = Path(f"{target}{suffix}")
            src.rename(dst)
            moved.append((src, dst))
    return moved


async def repair_state(
    config: Config,
    engine: Engine,
    *,
    reason: str,
    in_thread: InThread[object],
    processes: bool = True,
) -> RepairResult:
    """Rebuild, swap, quarantine, report (see the module's docstring)."""
    if engine.read_only is not None:
        raise engine.read_only
    if engine.writer is None or engine.fatal is not None:
        raise _failed("the daemon is not writing (read-only or stopped)")
    started_at = utc_now()
    started = time.perf_counter()
    stamp = _stamp(started_at)
    tmp_dir = config.state_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fresh = tmp_dir / f"repair-{stamp}.db"
    remove_db(fresh)
    target = engine.last_seq
    args = ["rebuild", "--log-dir", str(config.log_dir), "--out", str(fresh)]
    args += ["--upto", str(target)]
    try:
        if processes:
            outcome = await in_thread(lambda cancel: run_child(args, cancel=cancel))
        else:
            outcome = await in_thread(lambda _cancel: _rebuild_inline(config, fresh, target))
        if isinstance(outcome, Failed):
            if outcome.log_seq is not None:
                raise LogDamaged(outcome.log_seq, outcome.error)
            raise _failed(outcome.error)
        if not isinstance(outcome, RebuildDone) or outcome.last_seq != target:
            raise _failed(f"the replay stopped before seq {target}")
        replayed = outcome.applied
        replay_seconds = time.perf_counter() - started
        paused_at = time.perf_counter()
        async with engine.paused() as old:
            swap = _Swap(config, engine, old, fresh, stamp)
            try:
                new_conn = await anyio.to_thread.run_sync(swap.run)
            except OSError as exc:
                raise _failed(str(exc), exc.filename or config.state_db, exc.errno or 0) from exc
            except sqlite3.Error as exc:
                raise _failed(f"SQLite: {exc}") from exc
            engine.replace_connection(new_conn)
        pause_seconds = time.perf_counter() - paused_at
    finally:
        remove_db(fresh)
    await engine.readers.reopen()
    finished_at = utc_now()
    seconds = time.perf_counter() - started
    report = Report(
        id=recovery_report_id("repair", started_at),
        kind="repair",
        verdict="recovered",
        version=__version__,
        started_at=started_at,
        finished_at=finished_at,
        log_last_seq=engine.last_seq,
        state_last_seq_before=swap.old_last_seq,
        rebuilds=[
            Rebuild(
                reason=reason,
                quarantined_to=swap.quarantined_to,
                events_replayed=replayed + swap.rolled,
                events_lost=0,
            )
        ],
        actions=[
            f"The old state database is kept in {swap.quarantined_to}; compare it with the "
            "new one if the drift needs explaining, and remove it when no longer needed.",
            "Find out what changed the state database behind the daemon's back.",
        ],
    )
    report.phases.append(PhaseTime("replay", round(replay_seconds, 6)))
    report.phases.append(PhaseTime("swap (writes paused)", round(pause_seconds, 6)))
    path = await anyio.to_thread.run_sync(write_report, config.reports_dir, report)
    log.warning(
        "repaired the state database from the log (%s): %d events replayed, writes paused "
        "%.3f s; the old database is kept in %s",
        reason,
        replayed + swap.rolled,
        pause_seconds,
        swap.quarantined_to,
    )
    return RepairResult(
        report_id=report.id,
        report_path=str(path),
        started_at=started_at,
        finished_at=finished_at,
        seconds=round(seconds, 6),
        pause_seconds=round(pause_seconds, 6),
        last_seq=engine.last_seq,
        events_replayed=replayed,
        events_rolled_forward=swap.rolled,
        quarantined_to=swap.quarantined_to,
        reason=reason,
    )


def _rebuild_inline(config: Config, fresh: Path, target: int) -> Message:
    try:
        result = rebuild(config.log_dir, fresh, upto_seq=target)
    except LogDamaged as exc:
        return Failed(exc.message, exc.params.get("seq"))
    return RebuildDone(result.applied, result.last_seq, result.last_hash, result.seconds)


class _Swap:
    """Step 2, on a worker thread while the engine is paused (its lock is held by us)."""

    def __init__(
        self, config: Config, engine: Engine, old: sqlite3.Connection, fresh: Path, stamp: str
    ) -> None:
        self.config = config
        self.engine = engine
        self.old = old
        self.fresh = fresh
        self.stamp = stamp
        self.rolled = 0
        self.old_last_seq: int | None = None
        self.quarantined_to: str | None = None

    def run(self) -> sqlite3.Connection:
        config, engine = self.config, self.engine
        conn = open_scratch(self.fresh)
        try:
            self.rolled = roll_forward(conn, config.log_dir, stop_at=engine.last_seq).applied
            meta = read_meta(conn)
        finally:
            conn.close()
        if (meta.last_seq, meta.last_hash) != (engine.last_seq, engine.last_hash):
            raise _failed(
                f"the rebuilt state ends at seq {meta.last_seq}, the daemon's log at "
                f"{engine.last_seq}"
            )
        fsync_path(self.fresh)
        try:
            self.old_last_seq = read_meta(self.old).last_seq
        except sqlite3.Error:
            self.old_last_seq = None  # the old state's meta is part of what drifted
        config.quarantine_dir.mkdir(parents=True, exist_ok=True)
        kept = config.quarantine_dir / f"state-{self.stamp}.db"
        try:
            # The quarantined copy should stand on its own: move the WAL's pages into it.
            self.old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self.old.close()
        moved: list[tuple[Path, Path]] = []
        try:
            moved = _move_db(config.state_db, kept)
            OS_FILEOPS.fsync_dir(str(config.quarantine_dir))
            self.fresh.rename(config.state_db)
            OS_FILEOPS.fsync_dir(str(config.state_dir))
            new_conn = open_write(config.state_db)
        except BaseException:
            self._undo(moved)
            raise
        self.quarantined_to = str(kept)
        return new_conn

    def _undo(self, moved: list[tuple[Path, Path]]) -> None:
        """Put the old database back and give the engine a connection to it again."""
        for src, dst in reversed(moved):
            try:
                dst.rename(src)
            except OSError:
                log.exception("could not move %s back to %s", dst, src)
        try:
            self.engine.replace_connection(open_write(self.config.state_db))
        except Exception:
            log.exception("the old state database could not be reopened after a failed repair")
