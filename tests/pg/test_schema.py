"""pgstore/schema.py: creating, recognising and refusing databases; the generated columns."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator

import pytest

from timelined import events as ev
from timelined.events import Record
from timelined.pgstore import logtable, schema
from timelined.pgstore import sql as pgsql
from timelined.pgstore.sql import PgConnection
from timelined.state.apply import apply, set_meta
from timelined.state.db import read_fts_seq, read_meta


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[PgConnection]:
    with pgsql.connect(pg_dsn) as c:
        yield c


def _tables(conn: PgConnection) -> set[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_creates_once_then_recognises(conn: PgConnection) -> None:
    assert schema.ensure_schema(conn) is True
    assert {"log", "meta", "blocks", "retractions", "timelined_schema"} <= _tables(conn)
    assert schema.ensure_schema(conn) is False
    assert schema.schema_version(conn) == schema.PG_SCHEMA_VERSION
    meta = read_meta(conn)
    assert (meta.last_seq, meta.last_hash) == (0, schema.GENESIS_HASH)
    assert logtable.head(conn) == (0, schema.GENESIS_HASH)


def test_two_daemons_creating_at_once_create_it_once(pg_dsn: str) -> None:
    results: list[bool] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def one() -> None:
        try:
            with pgsql.connect(pg_dsn) as c:
                barrier.wait()
                results.append(schema.ensure_schema(c))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == [False, False, False, True]


def test_a_foreign_database_is_refused_untouched(conn: PgConnection) -> None:
    conn.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(schema.ForeignDatabase, match="customers"):
        schema.ensure_schema(conn)
    assert _tables(conn) == {"customers"}
    assert not conn.in_transaction


def test_a_newer_schema_is_refused(conn: PgConnection) -> None:
    schema.ensure_schema(conn)
    conn.execute("UPDATE timelined_schema SET version = ?", (schema.PG_SCHEMA_VERSION + 1,))
    with pytest.raises(schema.NewerSchema, match="upgrade timelined") as refused:
        schema.ensure_schema(conn)
    assert refused.value.found == schema.PG_SCHEMA_VERSION + 1


def test_ensure_schema_wants_no_open_transaction(conn: PgConnection) -> None:
    conn.execute("BEGIN")
    with pytest.raises(schema.PgSchemaError):
        schema.ensure_schema(conn)
    conn.execute("ROLLBACK")


def _record(seq: int, event: ev.Event) -> Record:
    return Record(
        seq=seq, ts="2026-01-01T00:00:00.000000Z", actor="daemon", event=event, prev="", hash=""
    )


def test_the_search_index_follows_the_state(conn: PgConnection) -> None:
    """fts_seq is generated from last_seq; a block far longer than a tsvector can hold (1 MiB)
    is stored whole and indexed by its first SEARCH_CHARS characters."""
    schema.ensure_schema(conn)
    words = " ".join(secrets.token_hex(4) for _ in range(150_000))  # ~1.35 M characters
    content = "needle " + words + " farneedle"
    conn.execute("BEGIN")
    apply(conn, _record(1, ev.ConversationCreated("conv_a", "a", "ctx_a")))
    apply(
        conn,
        _record(
            2,
            ev.BlockAppended(
                ev.BlockData(
                    id="blk_a",
                    context_id="ctx_a",
                    role="user",
                    content=content,
                    timestamp="2026-01-01T00:00:00.000000Z",
                )
            ),
        ),
    )
    set_meta(conn, 2, "f" * 64)
    conn.execute("COMMIT")
    assert read_fts_seq(conn) == 2
    stored = conn.execute("SELECT content FROM blocks WHERE id = 'blk_a'").fetchone()
    assert stored == (content,)
    found = conn.execute(
        "SELECT id FROM blocks WHERE tsv @@ to_tsquery('simple', ?)", ("needle",)
    ).fetchall()
    assert found == [("blk_a",)]
    beyond = conn.execute(
        "SELECT id FROM blocks WHERE tsv @@ to_tsquery('simple', ?)", ("farneedle",)
    ).fetchall()
    assert beyond == []  # past SEARCH_CHARS: the documented limit


def test_clear_state_keeps_the_log(conn: PgConnection) -> None:
    schema.ensure_schema(conn)
    conn.execute("BEGIN")
    apply(conn, _record(1, ev.ConversationCreated("conv_a", "a", "ctx_a")))
    set_meta(conn, 1, "a" * 64)
    conn.raw.execute("INSERT INTO log (seq, hash, line) VALUES (1, %s, %s)", ("a" * 64, b"x\n"))
    conn.execute("COMMIT")
    conn.execute("BEGIN")
    schema.clear_state(conn)
    conn.execute("COMMIT")
    assert conn.execute("SELECT count(*) FROM conversations").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM contexts").fetchone() == (0,)
    assert read_meta(conn).last_seq == 0
    assert conn.execute("SELECT context_id, seq FROM focus").fetchall() == [(None, 0)]
    assert logtable.read_lines(conn, 0, 10, 100) == [(1, b"x\n")]
