"""Repair on PostgreSQL: the state tables rebuilt from the log table, in one transaction.

There is no file to swap: the rebuild is one transaction that holds the head row (`meta`,
locked FOR UPDATE, as every daemon's batch locks it first), so no batch of any daemon runs
meanwhile, empties the state tables, replays every line of the log table through the one
`apply` (each line's hash checked, each link followed) and sets meta. Readers go on reading the
old state until the COMMIT (MVCC), then see the new one; a failure rolls back to the old state.
The log table is only read: its triggers refuse UPDATE, DELETE and TRUNCATE, and nothing here
asks for them.

The repairing daemon runs it inside `Engine.paused()` (its hot cache is forgotten before and
after); another daemon's writer waits on the head row and then takes the repaired state.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from timelined import __version__
from timelined.api.reports import PhaseTime, Rebuild, Report
from timelined.api.verify import RepairResult
from timelined.auditlog.record import GENESIS_PREV
from timelined.errors import StorageError
from timelined.events import SCHEMA_VERSION as EVENT_SCHEMA_VERSION
from timelined.ids import utc_now
from timelined.recovery.report import report_id as recovery_report_id
from timelined.recovery.report import write_report
from timelined.state.apply import apply, set_meta
from timelined.state.dbapi import DbConn
from timelined.state.replay import check_link
from timelined.verifier.compare import SINGLETONS, expected_schema
from timelined.verifier.pgrows import table_records

if TYPE_CHECKING:
    from timelined.writer.engine import Engine

log = logging.getLogger("timelined.verifier")


@dataclass(frozen=True, slots=True)
class Rebuilt:
    applied: int
    last_seq: int
    last_hash: str
    old_last_seq: int | None  # meta's before the rebuild (None: the row was gone)
    seconds: float


def rebuild_pg_state(conn: DbConn) -> Rebuilt:
    """Rebuild every state table from the log table in one transaction on `conn`."""
    started = time.perf_counter()
    _, tables = expected_schema()
    conn.execute("BEGIN")
    try:
        row = conn.execute("SELECT last_seq FROM meta WHERE id = 1 FOR UPDATE").fetchone()
        old = int(row[0]) if row is not None and isinstance(row[0], int) else None
        if row is None:
            conn.execute(
                "INSERT INTO meta (id, last_seq, last_hash, event_schema) VALUES (1, 0, ?, ?)",
                (GENESIS_PREV, EVENT_SCHEMA_VERSION),
            )
        # The singletons are reset in place, never deleted: a daemon waiting on the head row
        # must find it again (a row deleted under its FOR UPDATE is skipped: no head at all).
        for table in tables:
            if table.name not in SINGLETONS:
                conn.execute(f'DELETE FROM "{table.name}"')
        # The singletons are reset in place: a daemon waiting on the head row must find it
        # again (a row deleted under its FOR UPDATE would be skipped: no head at all).
        conn.execute(
            "INSERT OR IGNORE INTO focus (id, context_id, conversation_id, seq) "
            "VALUES (1, NULL, NULL, 0)"
        )
        conn.execute(
            "UPDATE focus SET context_id = NULL, conversation_id = NULL, seq = 0 WHERE id = 1"
        )
        last_seq, last_hash, applied = 0, GENESIS_PREV, 0
        for record in table_records(conn, hashed=True):
            check_link(record, last_seq, last_hash)
            apply(conn, record)
            last_seq, last_hash = record.seq, record.hash
            applied += 1
        set_meta(conn, last_seq, last_hash)  # meta.fts_seq follows: PostgreSQL generates it
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return Rebuilt(applied, last_seq, last_hash, old, time.perf_counter() - started)


async def repair_pg_state(
    engine: Engine,
    connect: Callable[[], DbConn],
    reports_dir: Path,
    *,
    reason: str,
    in_thread: Callable[[Callable[[], Rebuilt]], Awaitable[Rebuilt]] | None = None,
) -> RepairResult:
    """The daemon's repair on PostgreSQL: paused, rebuilt in one transaction, reported."""
    if engine.read_only is not None:
        raise engine.read_only
    started_at = utc_now()

    def work() -> Rebuilt:
        conn = connect()
        try:
            return rebuild_pg_state(conn)
        finally:
            conn.close()

    async with engine.paused():
        try:
            done = await (in_thread(work) if in_thread else anyio.to_thread.run_sync(work))
        except sqlite3.Error as exc:  # LogDamaged (a bad line in the table) goes as it is
            raise StorageError(
                "postgresql", 0, f"repair failed, the current state stays: {exc}"
            ) from exc
    finished_at = utc_now()
    report = Report(
        id=recovery_report_id("repair", started_at),
        kind="repair",
        verdict="recovered",
        version=__version__,
        started_at=started_at,
        finished_at=finished_at,
        log_last_seq=done.last_seq,
        state_last_seq_before=done.old_last_seq,
        rebuilds=[
            Rebuild(reason=reason, quarantined_to=None, events_replayed=done.applied, events_lost=0)
        ],
        actions=["Find out what changed the PostgreSQL state tables behind the daemons' backs."],
    )
    report.phases.append(PhaseTime("rebuild in one transaction", round(done.seconds, 6)))
    path = await anyio.to_thread.run_sync(write_report, reports_dir, report)
    log.warning(
        "repaired the PostgreSQL state tables from the log table (%s): %d events replayed in "
        "one transaction, %.3f s",
        reason,
        done.applied,
        done.seconds,
    )
    return RepairResult(
        report_id=report.id,
        report_path=str(path),
        started_at=started_at,
        finished_at=finished_at,
        seconds=round(done.seconds, 6),
        pause_seconds=round(done.seconds, 6),
        last_seq=done.last_seq,
        events_replayed=done.applied,
        events_rolled_forward=0,
        quarantined_to=None,
        reason=reason,
    )
