"""The state check on PostgreSQL: the state tables at one snapshot against the replay of the log
table, compared by the same code as on SQLite (compare.py, blocks.py).

Why a local copy: compare.py compares two SQLite databases attached to one connection
(streaming joins on the primary keys, the blocks merged as the replay makes them). The
PostgreSQL state is brought to that comparison, not the comparison to PostgreSQL, so a
difference is found, named and counted exactly as on SQLite. In one REPEATABLE READ snapshot:
the schema is checked (every table and column of the SQLite schema, the log table's
append-only triggers, the search column), meta's `last_seq` (S) and the log table's head (L)
are read, and every state table is copied page by page (pgrows.pages: bounded in rows and bytes)
into a local SQLite file with the same columns. The snapshot then ends, so a long replay does
not hold back the server's vacuum: the log rows up to L are committed and immutable (the
triggers refuse UPDATE and DELETE). They are replayed into a scratch database with the one
`apply`, and compared.

Log and state commit in one transaction on PostgreSQL, so in one snapshot the state must be
exactly the replay of the log up to its head L: the replay goes to L, not to meta's claim S,
and an S other than L is a difference of the meta row.

The search index is a column PostgreSQL computes itself (`blocks.tsv`, GENERATED ALWAYS, with
a GIN index): checked as part of the schema, not document by document.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from timelined.api.verify import Difference, DiffKind, VerifyProgress
from timelined.errors import LogDamaged
from timelined.state.apply import BlockRows, set_fts_seq
from timelined.state.dbapi import DbConn
from timelined.state.replay import apply_records
from timelined.state.schema import migrate
from timelined.verifier.blocks import BlockStream
from timelined.verifier.compare import (
    Differences,
    Table,
    _ident,
    blocks_table,
    compare_all,
    expected_schema,
)
from timelined.verifier.model import MAX_DIFFERENCES, StateResult
from timelined.verifier.pgrows import LOG_TABLE, pages, table_records
from timelined.verifier.replay import (
    REPLAY_CHUNK,
    ReplayConnection,
    open_replay_scratch,
    remove_db,
)

ProgressFn = Callable[[VerifyProgress], None]
SEARCH_COLUMN = "tsv"


def check_pg_state(
    conn: DbConn,
    work_dir: Path,
    *,
    cap: int = MAX_DIFFERENCES,
    progress: ProgressFn | None = None,
    in_transaction: bool = False,
) -> StateResult:
    """Compare the PostgreSQL state at one snapshot with the replay of the log table.

    `in_transaction`: the caller holds a transaction on `conn` (a migration checks what it has
    written before it commits); the check reads inside it and neither begins nor ends one.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    copy_path = work_dir / f"pgstate-{tag}.db"
    scratch = work_dir / f"verify-{tag}.db"
    out = Differences(cap)
    try:
        return _check(conn, copy_path, scratch, out, progress, in_transaction)
    finally:
        remove_db(scratch)
        remove_db(copy_path)


def _check(
    conn: DbConn,
    copy_path: Path,
    scratch: Path,
    out: Differences,
    progress: ProgressFn | None,
    in_transaction: bool,
) -> StateResult:
    copy = sqlite3.connect(
        f"file:{copy_path}", uri=True, isolation_level=None, check_same_thread=False
    )
    try:
        if not in_transaction:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            columns = check_schema(conn, out)
            note = check_search_column(conn, out) if "blocks" in columns else ""
            snapshot_seq, snapshot_hash = _meta(conn, columns)
            head = int(conn.execute(f"SELECT coalesce(max(seq), 0) FROM {LOG_TABLE}").fetchone()[0])
            copy_tables(conn, copy, columns, out, progress)
        finally:
            if not in_transaction:
                conn.execute("COMMIT")
        return _replay_and_compare(
            conn, copy, scratch, out, progress, columns, snapshot_seq, snapshot_hash, head, note
        )
    finally:
        copy.close()


def _replay_and_compare(
    conn: DbConn,
    copy: sqlite3.Connection,
    scratch: Path,
    out: Differences,
    progress: ProgressFn | None,
    columns: dict[str, tuple[str, ...]],
    snapshot_seq: int,
    snapshot_hash: str,
    head: int,
    note: str,
) -> StateResult:
    writer = open_replay_scratch(scratch)
    assert isinstance(writer, ReplayConnection)
    copy.execute("ATTACH DATABASE ? AS scratch", (f"file:{scratch}?mode=ro",))
    stream = None
    if "blocks" in columns:
        stream = BlockStream(
            copy, blocks_table(), columns["blocks"], search_index=False, cap=out.cap
        )
    writer.block_rows = BlockRows(stream.emit if stream is not None else _discard)
    log_error: str | None = None
    log_error_seq: int | None = None
    replayed_seq = applied = 0
    started = time.perf_counter()
    try:
        result = apply_records(
            writer,
            table_records(conn, upto_seq=head, hashed=False),
            chunk=REPLAY_CHUNK,
            progress=None
            if progress is None
            else lambda _done, seq: progress(VerifyProgress("replay", seq, head)),
            stop_at=head,
        )
        replayed_seq, applied = result.last_seq, result.applied
        set_fts_seq(writer, replayed_seq)  # PostgreSQL's search column is always current
    except LogDamaged as exc:
        log_error = exc.message
        log_error_seq = exc.params.get("seq")
        note = "not checked: the log could not be replayed"
    finally:
        writer.close()
    replay_seconds = time.perf_counter() - started
    started = time.perf_counter()
    if log_error is None:
        if stream is not None:
            stream.finish()
        compare_all(
            copy,
            out,
            None
            if progress is None
            else lambda done, total: progress(VerifyProgress("compare", done, total)),
            columns=columns,
            blocks=stream,
        )
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
        log_head_seq=head,
    )


def _discard(_row: object) -> None:
    """The blocks' rows when the state has no blocks table to compare them with."""


def _meta(conn: DbConn, columns: dict[str, tuple[str, ...]]) -> tuple[int, str]:
    """meta's (last_seq, last_hash) in the snapshot; (-1, "") when the row or columns are gone
    (the comparison reports them)."""
    if not {"last_seq", "last_hash"} <= set(columns.get("meta", ())):
        return -1, ""
    row = conn.execute("SELECT last_seq, last_hash FROM meta WHERE id = 1").fetchone()
    if row is None or not isinstance(row[0], int):
        return -1, ""
    return int(row[0]), str(row[1])


def check_schema(conn: DbConn, out: Differences) -> dict[str, tuple[str, ...]]:
    """Every table and column of the SQLite schema must be in PostgreSQL's (extra ones, such as
    the search column, are PostgreSQL's own); the log table must be there with its triggers.
    Returns the columns to copy and compare per table, as compare.compare_schema does."""
    have: dict[str, set[str]] = {}
    for table, column in conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema()"
    ).fetchall():
        have.setdefault(str(table), set()).add(str(column))
    _, tables = expected_schema()
    columns: dict[str, tuple[str, ...]] = {}
    for table in tables:
        present = have.get(table.name)
        if present is None:
            out.add(Difference(entity="schema", id=f"table {table.name}", kind="missing"))
            continue
        lacking = [c for c in table.columns if c not in present]
        if lacking:
            out.add(
                Difference(
                    entity="schema",
                    id=f"table {table.name}",
                    kind="changed",
                    detail=f"PostgreSQL's table lacks the column(s) {', '.join(lacking)}",
                )
            )
        if table.pk in present:
            columns[table.name] = tuple(c for c in table.columns if c in present)
    if LOG_TABLE not in have:
        out.add(Difference(entity="schema", id=f"table {LOG_TABLE}", kind="missing"))
    else:
        _check_triggers(conn, out)
    return columns


def _check_triggers(conn: DbConn, out: Differences) -> None:
    """The log table's append-only guard: its triggers exist and are enabled. A disabled one
    leaves the log open to UPDATE or DELETE (what the chain check would then find)."""
    triggers = conn.execute(
        "SELECT t.tgname, t.tgenabled FROM pg_trigger AS t "
        "JOIN pg_class AS c ON c.oid = t.tgrelid "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE c.relname = ? AND n.nspname = current_schema() AND NOT t.tgisinternal "
        "ORDER BY t.tgname",
        (LOG_TABLE,),
    ).fetchall()
    if not triggers:
        out.add(
            Difference(
                entity="schema",
                id=f"triggers on {LOG_TABLE}",
                kind="missing",
                detail="nothing refuses UPDATE, DELETE or TRUNCATE of the log table",
            )
        )
    for name, enabled in triggers:
        if str(enabled) == "D":
            out.add(
                Difference(
                    entity="schema",
                    id=f"trigger {name}",
                    kind="changed",
                    detail=f"the trigger guarding the {LOG_TABLE} table is disabled",
                )
            )


def check_search_column(conn: DbConn, out: Differences) -> str:
    """The search index: `blocks.tsv` generated by PostgreSQL from the content, GIN-indexed.
    Generated values cannot be written, so a generated column cannot drift from its content.
    Returns the report's note on it."""
    row = conn.execute(
        "SELECT is_generated, generation_expression FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'blocks' AND column_name = ?",
        (SEARCH_COLUMN,),
    ).fetchone()
    problem: tuple[DiffKind, str] | None = None
    if row is None:
        problem = ("missing", "the blocks table has no search column")
    elif row[0] != "ALWAYS":
        problem = ("changed", "the search column is not generated from the content: it can drift")
    elif not conn.execute(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() "
        "AND tablename = 'blocks' AND indexdef LIKE ?",
        (f"%USING gin ({SEARCH_COLUMN})%",),
    ).fetchone()[0]:
        problem = ("missing", "the search column has no GIN index")
    if problem is None:
        return f"blocks.{SEARCH_COLUMN} generated as {row[1]}, GIN-indexed: ok"
    kind, detail = problem
    out.add(
        Difference(entity="search index", id=f"blocks.{SEARCH_COLUMN}", kind=kind, detail=detail)
    )
    return f"blocks.{SEARCH_COLUMN}: {detail}"


@cache
def _column_types() -> dict[str, dict[str, str]]:
    """Each table's column types as the SQLite schema declares them (the copy's affinities)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        migrate(conn)
        _, tables = expected_schema()
        return {
            t.name: {str(c[1]): str(c[2]) for c in conn.execute(f'PRAGMA table_info("{t.name}")')}
            for t in tables
        }
    finally:
        conn.close()


def copy_tables(
    conn: DbConn,
    copy: sqlite3.Connection,
    columns: dict[str, tuple[str, ...]],
    out: Differences,
    progress: ProgressFn | None = None,
) -> None:
    """Copy each table's `columns` from PostgreSQL into `copy`, with the SQLite schema's types
    and primary keys (and no other constraint: a drifted row is copied to be compared)."""
    _, tables = expected_schema()
    types = _column_types()
    todo = [t for t in tables if t.name in columns]
    for done, table in enumerate(todo):
        cols = columns[table.name]
        decl = ", ".join(f'"{c}" {types[table.name][c]}' for c in cols)
        copy.execute(f'CREATE TABLE "{table.name}" ({decl}, PRIMARY KEY ("{table.pk}"))')
        names = ", ".join(f'"{c}"' for c in cols)
        marks = ", ".join("?" for _ in cols)
        insert = f'INSERT INTO "{table.name}" ({names}) VALUES ({marks})'
        copy.execute("BEGIN")
        for page in pages(conn, table.name, cols, table.pk):
            _insert_page(copy, insert, table, cols, page, out)
        copy.execute("COMMIT")
        if progress is not None:
            progress(VerifyProgress("snapshot", done + 1, len(todo)))


def _insert_page(
    copy: sqlite3.Connection,
    insert: str,
    table: Table,
    cols: tuple[str, ...],
    page: list[tuple[Any, ...]],
    out: Differences,
) -> None:
    copy.execute("SAVEPOINT page")
    try:
        copy.executemany(insert, page)
        copy.execute("RELEASE page")
        return
    except sqlite3.IntegrityError:
        copy.execute("ROLLBACK TO page")
        copy.execute("RELEASE page")
    # Two rows with one key: PostgreSQL's primary key was dropped. The second is extra.
    for row in page:
        try:
            copy.execute(insert, row)
        except sqlite3.IntegrityError:
            ident, key = _ident(table, cols, row)
            out.add(
                Difference(
                    entity=table.entity,
                    id=ident,
                    key=key,
                    kind="extra",
                    detail="a second row with the same primary key",
                )
            )
