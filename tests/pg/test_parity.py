"""The same log applied by state/apply.py to SQLite and to PostgreSQL gives the same state, and
every read of state/queries.py and state/lookup.py answers the same on both."""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import dump_state
from tests.pg.workload import build_log
from timelined.auditlog.reader import read_lines, read_records
from timelined.errors import TimelinedError
from timelined.pgstore import logtable, schema
from timelined.pgstore import sql as pgsql
from timelined.pgstore.sql import LogIsAppendOnly, PgConnection
from timelined.replies import ReplyBudget
from timelined.state import lookup, queries
from timelined.state.db import open_read, read_meta
from timelined.state.dbapi import DbConn
from timelined.state.replay import apply_records


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    state_dir = tmp_path_factory.mktemp("parity") / "state"
    ids = build_log(state_dir)
    return state_dir, ids


@pytest.fixture
def pg(pg_dsn: str, written: tuple[Path, dict[str, Any]]) -> Iterator[PgConnection]:
    """A PostgreSQL database that applied the whole log (and holds its lines)."""
    log_dir = written[0] / "log"
    with pgsql.connect(pg_dsn) as conn:
        assert schema.ensure_schema(conn)
        apply_records(conn, read_records(log_dir), chunk=500)
        lines = list(read_lines(log_dir))
        conn.execute("BEGIN")
        logtable.insert_lines(conn, list(read_records(log_dir)), [line for _, line in lines])
        conn.execute("COMMIT")
        yield conn


@pytest.fixture
def lite(written: tuple[Path, dict[str, Any]]) -> Iterator[sqlite3.Connection]:
    """The SQLite state the engine wrote itself."""
    conn = open_read(written[0] / "state.db")
    try:
        yield conn
    finally:
        conn.close()


def test_every_table_is_equal_row_by_row(pg: PgConnection, lite: sqlite3.Connection) -> None:
    want = dump_state(lite)
    got = dump_state(pg)
    assert want["retractions"] and want["crossrefs"] and len(want["blocks"]) > 300
    for table, rows in want.items():
        assert len(got[table]) == len(rows), table
        for a, b in zip(rows, got[table], strict=True):
            assert a == b, table
            # same types too: an int must not come back as a Decimal, nor a float as a str
            assert [type(v) for v in a] == [type(v) for v in b], table
    assert read_meta(pg) == read_meta(lite)


def test_the_log_table_holds_the_file_log_byte_for_byte(
    pg: PgConnection, written: tuple[Path, dict[str, Any]]
) -> None:
    log_dir = written[0] / "log"
    want = list(read_lines(log_dir))
    got: list[tuple[int, bytes]] = []
    after = 0
    while True:
        page = logtable.read_lines(pg, after, max_rows=97, max_bytes=16_384)
        if not page:
            break
        assert len(page) <= 97
        assert len(page) == 1 or sum(len(line) for _, line in page) <= 16_384
        got += page
        after = page[-1][0]
    assert got == want
    head = logtable.head(pg)
    assert (head.seq, head.hash) == (read_meta(pg).last_seq, read_meta(pg).last_hash)


def test_a_line_longer_than_the_byte_bound_comes_alone(pg: PgConnection) -> None:
    first = logtable.read_lines(pg, 0, max_rows=10, max_bytes=1)
    assert len(first) == 1 and first[0][0] == 1


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE log SET line = line || '\\x00'::bytea WHERE seq = 1",
        "UPDATE log SET hash = 'x'",
        "DELETE FROM log WHERE seq = (SELECT max(seq) FROM log)",
        "DELETE FROM log",
        "TRUNCATE log",
        "TRUNCATE log, meta",
    ],
)
def test_the_log_table_refuses_changes(pg: PgConnection, statement: str) -> None:
    before = logtable.read_lines(pg, 0, max_rows=100_000, max_bytes=1 << 30)
    with pytest.raises(LogIsAppendOnly, match=r"append-only: (UPDATE|DELETE|TRUNCATE) refused"):
        _raw(pg, statement)
    assert not pg.in_transaction
    assert logtable.read_lines(pg, 0, max_rows=100_000, max_bytes=1 << 30) == before


def _raw(pg: PgConnection, statement: str) -> None:
    """Run a statement as it is (no translation, no parameters), mapping the error."""
    try:
        pg.raw.execute(statement.encode())
    except psycopg.Error as exc:
        raise pgsql.map_error(exc) from exc


# --- every read ------------------------------------------------------------------------------


def _outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A read's answer, or its named error as (class, params): compared across backends."""
    try:
        return fn(*args, **kwargs)
    except TimelinedError as exc:
        return (type(exc).__name__, exc.params)


def _all_ids(conn: DbConn) -> dict[str, list[str]]:
    def column(statement: str) -> list[str]:
        return [str(r[0]) for r in conn.execute(statement).fetchall()]

    return {
        "conversations": column("SELECT id FROM conversations ORDER BY created_seq"),
        "contexts": column("SELECT id FROM contexts ORDER BY created_seq"),
        "blocks": column("SELECT id FROM blocks ORDER BY seq"),
        "crossrefs": column("SELECT id FROM crossrefs ORDER BY created_seq"),
    }


def _pages(fn: Callable[..., tuple[list[Any], int | None]], *args: Any, **kwargs: Any) -> Any:
    """Every page of a paged read, following its cursors (forward with `after`)."""
    out: list[Any] = []
    cursor: int | None = None
    for _ in range(10_000):
        page, cursor = fn(*args, after=cursor, **kwargs)
        out.append((page, cursor))
        if cursor is None:
            return out
    raise AssertionError("the cursor never ended")


def _tree_pages(conn: DbConn, conversation_id: str, reply_bytes: int, omit: bool = False) -> Any:
    """Every page of a tree, each page under a fresh byte budget (as GetTree's replies)."""
    out: list[Any] = []
    cursor: int | None = None
    for _ in range(10_000):
        try:
            page, cursor = queries.tree_page(
                conn,
                conversation_id,
                after=cursor,
                budget=ReplyBudget(reply_bytes),
                omit_crossrefs=omit,
            )
        except TimelinedError as exc:
            out.append(type(exc).__name__)
            return out
        out.append((page, cursor))
        if cursor is None:
            return out
    raise AssertionError("the cursor never ended")


def _backward_pages(conn: DbConn, context_id: str, limit: int) -> Any:
    out: list[Any] = []
    page, cursor = queries.list_blocks(conn, context_id, limit=limit, before=2**40)
    out.append((page, cursor))
    while cursor is not None:
        page, cursor = queries.list_blocks(conn, context_id, limit=limit, before=cursor)
        out.append((page, cursor))
    return out


MISSING = "ctx_doesnotexist000"


def every_read(conn: DbConn, ids: dict[str, list[str]]) -> dict[str, Any]:
    """Each public read of queries.py and lookup.py (but search: test_search_pg.py) over every
    entity, answers and named errors alike."""
    q, lk = queries, lookup
    out: dict[str, Any] = {}
    convs = [*ids["conversations"], MISSING]
    ctxs = [*ids["contexts"], MISSING]
    blocks = [*ids["blocks"], MISSING]
    refs = [*ids["crossrefs"], MISSING]
    out["get_conversation"] = [q.get_conversation(conn, c) for c in convs]
    out["conversation_exists"] = [q.conversation_exists(conn, c) for c in convs]
    out["list_conversations"] = [
        _pages(q.list_conversations, conn, include_archived=archived, limit=limit, name=name)
        for archived in (True, False)
        for limit in (1, 3, 1000)
        for name in (None, "src", "renamed · 名前", "nobody")
    ]
    out["get_context"] = [q.get_context(conn, c, crossrefs=x) for c in ctxs for x in (True, False)]
    out["context_exists"] = [q.context_exists(conn, c) for c in ctxs]
    out["get_tree"] = [q.get_tree(conn, c) for c in convs]
    out["tree_page"] = [
        _tree_pages(conn, c, size, omit)
        for c in convs
        for size in (700, 2_000, 10**6)
        for omit in (False, True)
    ]
    out["get_context reply_bytes"] = [
        _outcome(q.get_context, conn, c, reply_bytes=size) for c in ctxs for size in (700, 10**6)
    ]
    out["crossrefs_page"] = [
        _pages(q.crossrefs_page, conn, c, limit=limit) for c in ctxs for limit in (None, 1, 3)
    ]
    out["crossrefs_page budget"] = [
        _outcome(q.crossrefs_page, conn, c, budget=ReplyBudget(size))
        for c in ctxs
        for size in (300, 700, 10**6)
    ]
    out["crossrefs_or_raise"] = [
        _outcome(lk.crossrefs_or_raise, conn, c, limit=2, reply_bytes=10**6) for c in ctxs
    ]
    out["ancestors"] = [q.ancestors(conn, c) for c in ctxs]
    out["own_block_count"] = [q.own_block_count(conn, c) for c in ctxs]
    out["get_crossref"] = [q.get_crossref(conn, r) for r in refs]
    out["crossref_bytes"] = [q.crossref_bytes(conn, c) for c in ctxs]
    out["is_retracted"] = [q.is_retracted(conn, b) for b in blocks]
    out["get_block"] = [q.get_block(conn, b) for b in blocks]
    out["list_blocks"] = [
        _pages(
            q.list_blocks,
            conn,
            c,
            limit=limit,
            roles=roles,
            since=since,
            until=until,
            include_retracted=retracted,
            budget=ReplyBudget(budget) if budget else None,
        )
        for c in ctxs[:40]
        for limit, roles, since, until, retracted, budget in (
            (1000, None, None, None, False, 0),
            (7, None, None, None, True, 0),
            (5, ["user", "tool"], None, None, False, 0),
            (50, None, "2026-01-01T00:00:00Z", "2099-01-01T00:00:00Z", False, 0),
            (50, None, None, None, False, 2048),
        )
    ]
    out["list_blocks backward"] = [_backward_pages(conn, c, 4) for c in ctxs[:40]]
    out["history"] = [
        _outcome(q.history, conn, c, limit=limit, budget=ReplyBudget(budget) if budget else None)
        for c in ctxs
        for limit, budget in ((None, 0), (3, 0), (None, 4096))
    ]
    out["conversation_stats"] = [q.conversation_stats(conn, c) for c in convs]
    out["focus"] = q.focus(conn)
    out["startup_state"] = q.startup_state(conn)
    out["conversation_or_raise"] = [_outcome(lk.conversation_or_raise, conn, c) for c in convs]
    out["context_or_raise"] = [_outcome(lk.context_or_raise, conn, c) for c in ctxs]
    out["block_or_raise"] = [_outcome(lk.block_or_raise, conn, b) for b in blocks]
    out["crossref_or_raise"] = [_outcome(lk.crossref_or_raise, conn, r) for r in refs]
    out["require_conversation"] = [_outcome(lk.require_conversation, conn, c) for c in convs]
    out["require_context"] = [_outcome(lk.require_context, conn, c) for c in ctxs]
    out["tree_or_raise"] = [_outcome(lk.tree_or_raise, conn, c) for c in convs]
    out["blocks_or_raise"] = [
        _outcome(
            lk.blocks_or_raise,
            conn,
            c,
            limit=20,
            after=None,
            before=None,
            roles=None,
            since=None,
            until=None,
            reply_bytes=8192,
            include_retracted=True,
        )
        for c in ctxs
    ]
    out["history_or_raise"] = [
        _outcome(lk.history_or_raise, conn, c, limit=5, reply_bytes=2048) for c in ctxs
    ]
    out["stats_or_raise"] = [_outcome(lk.stats_or_raise, conn, c) for c in convs]
    return out


def _public_reads(module: Any) -> set[str]:
    """The module's public functions that read a connection (first parameter `conn`)."""
    return {
        name
        for name, fn in vars(module).items()
        if inspect.isfunction(fn)
        and fn.__module__ == module.__name__
        and not name.startswith("_")
        and next(iter(inspect.signature(fn).parameters), None) == "conn"
    }


def test_every_read_answers_the_same(
    pg: PgConnection, lite: sqlite3.Connection, written: tuple[Path, dict[str, Any]]
) -> None:
    ids = _all_ids(lite)
    assert _all_ids(pg) == ids
    # The reads run on the named entities too (archived, imported, retracted ones).
    for kind in ("conversations", "crossrefs"):
        assert set(written[1][kind]) <= set(ids[kind])
    want = every_read(lite, ids)
    got = every_read(pg, ids)
    # A new read in queries.py or lookup.py must be added to `every_read` (or to the search
    # tests): this fails until it is.
    covered = {name.split(" ")[0] for name in want} | {"search", "search_or_raise"}
    missing = (_public_reads(queries) | _public_reads(lookup)) - covered
    assert not missing, f"reads without a parity check: {sorted(missing)}"
    assert want.keys() == got.keys()
    for name in want:
        assert got[name] == want[name], name
    # the reads saw something: not a comparison of empty answers
    omitted = [c for c in want["get_context reply_bytes"] if getattr(c, "crossrefs_omitted", 0)]
    assert omitted, "no context's cross-references outgrew a 700-byte reply"
    assert any(h for h in want["history"] if isinstance(h, list) and len(h) > 3)
    assert any(isinstance(h, tuple) and h[0] == "LimitExceeded" for h in want["history"])
    assert want["startup_state"].has_data
