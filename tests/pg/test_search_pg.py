"""SearchBlocks on PostgreSQL (state/search_pg.py), through queries.search's dispatch."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from timelined import events as ev
from timelined.api.model import SearchHit
from timelined.errors import ConversationNotFound
from timelined.events import Record
from timelined.pgstore import schema
from timelined.pgstore import sql as pgsql
from timelined.pgstore.sql import PgConnection
from timelined.replies import ReplyBudget
from timelined.state import lookup, queries, search_pg
from timelined.state.apply import apply, set_meta
from timelined.state.db import open_scratch
from timelined.state.dbapi import DbConn

TS = "2026-01-01T00:00:00.000000Z"
BLOB = "zebra" + "x" * 20_000  # one 20,005-character token holding the word's prefix only

# (conversation, role, content); block i gets seq i + 3 (two conversations first)
BLOCKS = [
    ("a", "user", "the quick brown fox jumps over the lazy dog"),
    ("a", "assistant", "a fox, a fox, a fox: three foxes say fox"),
    ("a", "tool", "nothing to see here"),
    ("b", "user", "the fox went to conversation b"),
    ("b", "assistant", "Grüße aus Köln: ein Fuchs, fox und 日本語"),
    ("b", "user", "retracted fox block"),
    ("a", "user", "zebra " + "filler " * 3000 + "zebra at the end"),
    ("a", "user", BLOB),
]
RETRACTED = 5  # index in BLOCKS


def _record(seq: int, event: ev.Event) -> Record:
    return Record(seq=seq, ts=TS, actor="daemon", event=event, prev="", hash="")


def fill(conn: DbConn) -> None:
    conn.execute("BEGIN")
    apply(conn, _record(1, ev.ConversationCreated("conv_a", "a", "ctx_a")))
    apply(conn, _record(2, ev.ConversationCreated("conv_b", "b", "ctx_b")))
    seq = 2
    for i, (conv, role, content) in enumerate(BLOCKS):
        seq += 1
        block = ev.BlockData(
            id=f"blk_{i:04d}", context_id=f"ctx_{conv}", role=role, content=content, timestamp=TS
        )
        apply(conn, _record(seq, ev.BlockAppended(block)))
    seq += 1
    apply(
        conn, _record(seq, ev.BlockRetracted(block_id=f"blk_{RETRACTED:04d}", context_id="ctx_b"))
    )
    set_meta(conn, seq, "f" * 64)
    conn.execute("COMMIT")


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[PgConnection]:
    with pgsql.connect(pg_dsn) as conn:
        schema.ensure_schema(conn)
        fill(conn)
        yield conn


@pytest.fixture
def lite() -> Iterator[sqlite3.Connection]:
    conn = open_scratch(":memory:")
    fill(conn)
    yield conn
    conn.close()


def ids(hits: list[SearchHit]) -> list[str]:
    return [h.block_id for h in hits]


def test_hits_best_first_with_snippets(pg: PgConnection) -> None:
    hits = queries.search(pg, "fox")
    assert all(type(h) is SearchHit for h in hits)
    # the retracted block is left out; the block saying fox five times ranks first
    assert ids(hits)[0] == "blk_0001"
    assert set(ids(hits)) == {"blk_0000", "blk_0001", "blk_0003", "blk_0004"}
    ranks = [h.rank for h in hits]
    assert ranks == sorted(ranks)  # lower is better, as bm25's
    first = hits[0]
    assert "[fox]" in first.snippet
    assert (first.context_id, first.conversation_id, first.role, first.seq) == (
        "ctx_a",
        "conv_a",
        "assistant",
        4,
    )


def test_equal_ranks_newest_first(pg: PgConnection) -> None:
    pg.execute("BEGIN")
    for n in range(3):
        block = ev.BlockData(
            id=f"blk_same{n}", context_id="ctx_b", role="user", content="same words", timestamp=TS
        )
        apply(pg, _record(100 + n, ev.BlockAppended(block)))
    pg.execute("COMMIT")
    assert ids(queries.search(pg, "same")) == ["blk_same2", "blk_same1", "blk_same0"]


def test_filters(pg: PgConnection) -> None:
    assert set(ids(queries.search(pg, "fox", conversation_id="conv_b"))) == {
        "blk_0003",
        "blk_0004",
    }
    assert set(ids(queries.search(pg, "fox", context_id="ctx_a"))) == {"blk_0000", "blk_0001"}
    assert set(ids(queries.search(pg, "fox", role="user"))) == {"blk_0000", "blk_0003"}
    assert ids(queries.search(pg, "fox", conversation_id="conv_a", role="tool")) == []
    assert len(queries.search(pg, "fox", limit=2)) == 2


def test_websearch_syntax_and_unicode(pg: PgConnection) -> None:
    assert ids(queries.search(pg, '"lazy dog"')) == ["blk_0000"]
    assert ids(queries.search(pg, '"dog lazy"')) == []
    assert set(ids(queries.search(pg, "fox -quick"))) == {"blk_0001", "blk_0003", "blk_0004"}
    assert ids(queries.search(pg, "köln")) == ["blk_0004"]  # lower-cased, accents kept
    assert ids(queries.search(pg, "日本語")) == ["blk_0004"]
    # what FTS5 would call a syntax error, or has no words at all: no hits, not an error
    for odd in ('"unbalanced', "& | !", "-", "", "NEAR(fox dog)", "*"):
        assert isinstance(queries.search(pg, odd), list)


def test_snippets_are_bounded(pg: PgConnection) -> None:
    long_doc = queries.search(pg, "filler")
    assert ids(long_doc) == ["blk_0006"]
    assert len(long_doc[0].snippet) <= queries.SNIPPET_CHARS
    blob = pg.execute("SELECT content FROM blocks WHERE id = 'blk_0007'").fetchone()[0]
    assert blob == BLOB
    zebra = queries.search(pg, "zebra")  # blk_0007's token is not the word zebra
    assert ids(zebra) == ["blk_0006"]
    assert "[zebra]" in zebra[0].snippet
    token = "y" * 5000
    pg.execute("BEGIN")
    block = ev.BlockData(
        id="blk_huge", context_id="ctx_a", role="user", content=f"{token} tail", timestamp=TS
    )
    apply(pg, _record(200, ev.BlockAppended(block)))
    pg.execute("COMMIT")
    # a word longer than PostgreSQL indexes (2047 bytes) is skipped, the rest still is
    huge = queries.search(pg, "tail")
    assert ids(huge) == ["blk_huge"]
    assert len(huge[0].snippet) <= queries.SNIPPET_CHARS
    assert huge[0].snippet.endswith("…") or len(huge[0].snippet) < queries.SNIPPET_CHARS


def test_reply_budget_truncates(pg: PgConnection) -> None:
    everything = queries.search(pg, "fox")
    assert len(everything) == 4
    budget = ReplyBudget(700)
    some = queries.search(pg, "fox", budget=budget)
    assert 0 < len(some) < len(everything)
    assert some == everything[: len(some)]
    assert budget.full


def test_ranking_is_bounded_to_the_most_recent_matches(
    pg: PgConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on SQLite: the best of the most recent SEARCH_RANKED_MATCHES matches. blk_0001 says
    fox most often, but is not among the 2 most recent matches."""
    monkeypatch.setattr(search_pg, "SEARCH_RANKED_MATCHES", 2)
    assert set(ids(queries.search(pg, "fox"))) == {"blk_0003", "blk_0004"}


def test_checked_search_names_a_missing_parent(pg: PgConnection) -> None:
    with pytest.raises(ConversationNotFound):
        lookup.search_or_raise(
            pg, "fox", conversation_id="conv_nope", context_id=None, role=None, limit=5
        )
    found = lookup.search_or_raise(
        pg, "fox", conversation_id="conv_a", context_id=None, role=None, limit=5
    )
    assert set(ids(found)) == {"blk_0000", "blk_0001"}


@pytest.mark.parametrize(
    ("query", "kwargs"),
    [
        ("fox", {}),
        ("fox", {"conversation_id": "conv_b"}),
        ("fox", {"role": "user"}),
        ("nothing", {}),
        ("absentword", {}),
    ],
)
def test_same_hits_as_sqlite_for_plain_words(
    pg: PgConnection, lite: sqlite3.Connection, query: str, kwargs: dict[str, str]
) -> None:
    """Ranks are each engine's own; which blocks match a plain word, and the reply's shape, are
    the same on both backends."""
    got = queries.search(pg, query, **kwargs)  # type: ignore[arg-type]
    want = queries.search(lite, query, **kwargs)  # type: ignore[arg-type]
    assert {h.block_id for h in got} == {h.block_id for h in want}
    strip = [(h.block_id, h.context_id, h.conversation_id, h.role, h.seq) for h in got]
    assert sorted(strip) == sorted(
        (h.block_id, h.context_id, h.conversation_id, h.role, h.seq) for h in want
    )
