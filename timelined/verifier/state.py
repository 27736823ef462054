"""The state check: replay the log to the state's snapshot and compare, entity by entity.

One read-only connection opens a read transaction on the state database and reads
`meta.last_seq` = S: that fixes the WAL snapshot every later read of the check sees, however
much the writer commits meanwhile. The log is replayed up to S into a scratch database (attached
to the same connection) and the two are compared (compare.py).

`copy=True` (offline verification) first copies the database and its WAL into the work
directory: opening a WAL database, even read-only, creates its -wal and -shm files, and an
auditor's directory must not change. The copy is writable, so FTS5's own `integrity-check` can
run on it as well (in a thread, alongside the replay).

The blocks are not replayed into the scratch database: they are compared with the state's as the
replay makes them (blocks.py), once the schema has been compared.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from timelined.api.verify import Difference, VerifyProgress
from timelined.errors import LocalError, LogDamaged
from timelined.state.apply import BlockRows, index_blocks, set_fts_seq
from timelined.verifier.blocks import BlockStream
from timelined.verifier.compare import (
    Differences,
    blocks_table,
    compare_all,
    compare_schema,
    expected_fts_seq,
    has_search_index,
    read_fts_seq,
)
from timelined.verifier.model import MAX_DIFFERENCES, StateResult
from timelined.verifier.replay import (
    ReplayConnection,
    open_replay_scratch,
    remove_db,
    replay_into,
)

ProgressFn = Callable[[VerifyProgress], None]


class ScratchError(LocalError, RuntimeError):
    """The scratch replay failed for a reason of its own (a full disk, a bug): not drift."""

    name = "ScratchError"


def copy_state(state_db: Path, target: Path) -> None:
    """Copy a stopped daemon's database (and WAL, if any) without writing next to it."""
    shutil.copyfile(state_db, target)
    wal = Path(f"{state_db}-wal")
    if wal.exists():
        shutil.copyfile(wal, f"{target}-wal")


def check_state(
    state_db: Path,
    log_dir: Path,
    work_dir: Path,
    *,
    copy: bool = False,
    cap: int = MAX_DIFFERENCES,
    on_snapshot: Callable[[int, str], None] | None = None,
    progress: ProgressFn | None = None,
) -> StateResult:
    """Compare the state database at one snapshot with the replay of the log up to it."""
    work_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    scratch = work_dir / f"verify-{tag}.db"
    live = work_dir / f"state-{tag}.db" if copy else state_db
    out = Differences(cap)
    try:
        if copy:
            copy_state(state_db, live)
        return _check(live, log_dir, scratch, out, copy, on_snapshot, progress)
    finally:
        remove_db(scratch)
        if copy:
            remove_db(live)


def _check(
    live: Path,
    log_dir: Path,
    scratch: Path,
    out: Differences,
    copy: bool,
    on_snapshot: Callable[[int, str], None] | None,
    progress: ProgressFn | None,
) -> StateResult:
    writer = open_replay_scratch(scratch)
    assert isinstance(writer, ReplayConnection)
    uri = f"file:{live}" if copy else f"file:{live}?mode=ro"
    conn: sqlite3.Connection | None = None
    fts: _FtsIntegrity | None = None
    snapshot_seq, snapshot_hash = -1, ""
    replayed_seq = applied = 0
    replay_seconds = 0.0
    log_error: str | None = None
    log_error_seq: int | None = None
    note = "not checked"
    started = time.perf_counter()
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
        conn.execute("ATTACH DATABASE ? AS scratch", (f"file:{scratch}?mode=ro",))
        conn.execute("BEGIN")
        row = _read_meta(conn)
        if row is not None:
            snapshot_seq, snapshot_hash = row
        if on_snapshot is not None:
            on_snapshot(snapshot_seq, snapshot_hash)
        # The index lags the state by design (the writer indexes after its COMMITs): it is
        # compared up to its own recorded position, and the replay records the same position.
        indexed_upto = expected_fts_seq(read_fts_seq(conn), snapshot_seq)
        # The schema is read first: the blocks are compared while the replay makes them.
        schema = Differences(out.cap)
        schema_error: sqlite3.DatabaseError | None = None
        stream: BlockStream | None = None
        columns: dict[str, tuple[str, ...]] = {}
        try:
            columns = compare_schema(conn, schema)
            if "blocks" in columns:
                stream = BlockStream(
                    conn,
                    blocks_table(),
                    columns["blocks"],
                    search_index=has_search_index(conn),
                    cap=out.cap,
                    indexed_upto=indexed_upto,
                )
        except sqlite3.DatabaseError as exc:
            schema_error = exc  # raised after the replay, as the comparison would have
        writer.block_rows = BlockRows(stream.emit if stream is not None else _discard)
        if copy:
            fts = _FtsIntegrity(live)
            fts.start()
        started = time.perf_counter()
        try:
            total = max(snapshot_seq, 0)
            result = replay_into(
                writer,
                log_dir,
                snapshot_seq if snapshot_seq >= 0 else 10**19,
                None
                if progress is None
                else lambda done, seq: progress(VerifyProgress("replay", seq, total)),
            )
            replayed_seq, applied = result.last_seq, result.applied
            set_fts_seq(writer, min(indexed_upto, replayed_seq))
        except LogDamaged as exc:
            log_error = exc.message
            log_error_seq = exc.params.get("seq")
            note = "not checked: the log could not be replayed"
        except sqlite3.Error as exc:
            raise ScratchError(f"the scratch replay failed: {exc}") from exc
        finally:
            writer.close()
        replay_seconds = time.perf_counter() - started
        started = time.perf_counter()
        if log_error is None:
            out.extend(schema)
            if schema_error is not None:
                raise schema_error
            if stream is not None:
                stream.finish()
            note = compare_all(
                conn,
                out,
                None
                if progress is None
                else lambda done, total: progress(VerifyProgress("compare", done, total)),
                columns=columns,
                blocks=stream,
            )
        conn.execute("COMMIT")
        if fts is not None and log_error is None and "no search index" not in note:
            note += "; " + fts.result(out)
    except sqlite3.DatabaseError as exc:
        # The state database cannot be read as one (not a database, malformed pages): the
        # state differs from the log as much as it can.
        out.add(
            Difference(
                entity="database",
                id=live.name if not copy else "state.db",
                kind="changed",
                detail=f"SQLite cannot read the state database: {exc}",
            )
        )
    finally:
        if fts is not None:
            fts.stop()
        if conn is not None:
            conn.close()
        writer.close()
    return StateResult(
        snapshot_seq=snapshot_seq,
        snapshot_hash=snapshot_hash,
        replayed_seq=replayed_seq,
        events_replayed=applied,
        differences=out.items,
        differences_total=out.total,
        search_index=note,
        replay_seconds=round(replay_seconds, 6),
        compare_seconds=round(time.perf_counter() - started, 6),
        log_error=log_error,
        log_error_seq=log_error_seq,
    )


def _discard(_row: object) -> None:
    """The blocks' rows when the state database has no blocks table to compare them with."""


def _read_meta(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """The snapshot's (last_seq, last_hash); None when the meta row or table is gone."""
    try:
        row = conn.execute("SELECT last_seq, last_hash FROM main.meta WHERE id = 1").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such" not in str(exc):
            raise
        # Start the snapshot anyway: the schema comparison reports the missing table.
        conn.execute("SELECT count(*) FROM main.sqlite_master").fetchone()
        return None
    if row is None or not isinstance(row[0], int):
        return None
    return int(row[0]), str(row[1])


def _index_gap(conn: sqlite3.Connection) -> None:
    """Index the blocks the writer had not indexed yet (past meta.fts_seq), if the copy says."""
    try:
        fts_seq, last_seq = conn.execute("SELECT fts_seq, last_seq FROM meta").fetchone()
    except (sqlite3.OperationalError, TypeError):
        return  # no position recorded: the schema comparison reports it
    if isinstance(fts_seq, int) and isinstance(last_seq, int) and fts_seq < last_seq:
        index_blocks(conn, fts_seq, last_seq)


class _FtsIntegrity(threading.Thread):
    """FTS5's token-level check of the index against block content, on the writable copy.

    It runs in a thread while the replay runs: the statement is SQLite's own work, done with the
    GIL released, so it takes the second core's idle time instead of adding to the run's. Its
    own connection opens the copy (the check is an INSERT: it cannot share the read-only
    snapshot); nothing writes the copy, so it sees the same content.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(name="fts-integrity-check", daemon=True)
        self.path = path
        self.error: sqlite3.DatabaseError | None = None
        self.conn: sqlite3.Connection | None = None

    def run(self) -> None:
        try:
            self.conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=600
            )
            # FTS5 checks the index against every row of `blocks`, and the writer indexes after
            # its commits: the blocks past `meta.fts_seq` are indexed first, inside a
            # transaction rolled back after the check (the documents themselves are compared
            # up to fts_seq by compare.py; a document past it fails this check as well).
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                _index_gap(self.conn)
                self.conn.execute(
                    "INSERT INTO main.blocks_fts (blocks_fts, rank) VALUES ('integrity-check', 1)"
                )
            finally:
                self.conn.execute("ROLLBACK")
        except sqlite3.DatabaseError as exc:
            self.error = exc
        finally:
            if self.conn is not None:
                self.conn.close()

    def stop(self) -> None:
        """Abandon the check (the run ends without needing it)."""
        conn = self.conn
        if conn is not None and self.is_alive():
            try:
                conn.interrupt()
            except sqlite3.ProgrammingError:
                pass  # closed meanwhile
        self.join()

    def result(self, out: Differences) -> str:
        self.join()
        if self.error is not None:
            out.add(
                Difference(
                    entity="search index",
                    id="blocks_fts",
                    kind="changed",
                    detail="FTS5's integrity-check finds the index does not match the blocks' "
                    f"content (SQLite says: {self.error})",
                )
            )
            return "integrity-check failed"
        return "integrity-check ok"
