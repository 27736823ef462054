"""Replay: the state database from the log alone, or rolled forward past its `last_seq`.

Both paths feed records through the same `apply` the writer uses, in large transactions, and
check the chain as they go (each record's `seq` follows and its `prev` is the hash before it), so
a replay never builds a state from a log it has not verified.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from timelined.auditlog.reader import read_records
from timelined.errors import LogDamaged
from timelined.events import Record
from timelined.state.apply import apply, index_blocks, set_fts_seq, set_meta
from timelined.state.db import open_scratch, read_fts_seq, read_meta
from timelined.state.dbapi import DbConn

Progress = Callable[[int, int], None]  # (events applied so far, last seq applied)


@dataclass(frozen=True)
class ReplayResult:
    applied: int
    last_seq: int
    last_hash: str
    seconds: float


def apply_records(
    conn: DbConn,
    records: Iterable[Record],
    *,
    chunk: int = 20_000,
    progress: Progress | None = None,
    stop_at: int | None = None,
) -> ReplayResult:
    """Apply records after the state's meta, committing every `chunk` events with the meta.

    A connection that keeps the search index (all but the verifier's scratch) first indexes
    the blocks the writer committed but had not indexed yet (`meta.fts_seq < last_seq`: a
    crash between a batch's COMMIT and its index's), then indexes each record's block as it
    applies it, so the index is whole at every commit of the replay.
    """
    started = time.perf_counter()
    meta = read_meta(conn)
    last_seq, last_hash = meta.last_seq, meta.last_hash
    applied = 0
    indexes = getattr(conn, "search_index", True)
    conn.execute("BEGIN IMMEDIATE")
    try:
        if indexes:
            fts_seq = read_fts_seq(conn)
            if fts_seq != last_seq:
                index_blocks(conn, min(fts_seq, last_seq), last_seq)
        for record in records:
            if stop_at is not None and record.seq > stop_at:
                break
            check_link(record, last_seq, last_hash)
            apply(conn, record)
            last_seq, last_hash = record.seq, record.hash
            applied += 1
            if applied % chunk == 0:
                set_meta(conn, last_seq, last_hash)
                if indexes:
                    set_fts_seq(conn, last_seq)
                conn.execute("COMMIT")
                if progress is not None:
                    progress(applied, last_seq)
                conn.execute("BEGIN IMMEDIATE")
        set_meta(conn, last_seq, last_hash)
        if indexes:
            set_fts_seq(conn, last_seq)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if progress is not None:
        progress(applied, last_seq)
    return ReplayResult(applied, last_seq, last_hash, time.perf_counter() - started)


def check_link(record: Record, last_seq: int, last_hash: str) -> None:
    """Raise LogDamaged unless `record` follows (`last_seq`, `last_hash`) in the chain."""
    if record.seq != last_seq + 1 or record.prev != last_hash:
        raise LogDamaged(
            record.seq,
            f"expected seq {last_seq + 1} with prev {last_hash[:12]}…, found seq "
            f"{record.seq} with prev {record.prev[:12]}…",
        )


def roll_forward(
    conn: DbConn,
    log_dir: Path,
    *,
    progress: Progress | None = None,
    stop_at: int | None = None,
) -> ReplayResult:
    """Apply every log record past the state's `last_seq`."""
    meta = read_meta(conn)
    if not log_dir.exists():
        return ReplayResult(0, meta.last_seq, meta.last_hash, 0.0)
    records = read_records(log_dir, after_seq=meta.last_seq, upto_seq=stop_at)
    return apply_records(conn, records, progress=progress, stop_at=stop_at)


def rebuild(
    log_dir: Path,
    db_path: Path | str,
    *,
    upto_seq: int | None = None,
    progress: Progress | None = None,
) -> ReplayResult:
    """Build a new state database at `db_path` (which must not exist) from the log alone."""
    conn = open_scratch(db_path)
    try:
        return roll_forward(conn, log_dir, progress=progress, stop_at=upto_seq)
    finally:
        conn.close()
