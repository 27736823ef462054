"""state.lookup: each helper answers what its query answers, and for an id that is not there
raises the named NotFound (the error the writer's rules and the daemon's reads both give)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from timelined import events as ev
from timelined.errors import (
    BlockNotFound,
    ContextNotFound,
    ConversationNotFound,
    CrossRefNotFound,
    LimitExceeded,
    TimelinedError,
)
from timelined.events import Actor, Record
from timelined.replies import REPLY_ENVELOPE, REPLY_LIMIT, ReplyBudget, item_size
from timelined.state import lookup
from timelined.state import queries as q
from timelined.state.apply import apply
from timelined.state.schema import migrate

ACTOR = Actor(uid=1000, gid=1000, pid=4242)
TS = "2026-11-22T10:00:00.000001Z"


@pytest.fixture
def conn() -> sqlite3.Connection:
    """A state with one conversation, a sidebar, a block and a cross-reference, applied as a
    replay applies them."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    migrate(db)
    events: list[ev.Event] = [
        ev.ConversationCreated(conversation_id="conv_a", name="a", root_context_id="ctx_root"),
        ev.ContextSpawned(
            context_id="ctx_side", conversation_id="conv_a", parent_id="ctx_root", reason="look"
        ),
        ev.BlockAppended(
            block=ev.BlockData(
                id="blk_1", context_id="ctx_root", role="user", content="hello world", timestamp=TS
            )
        ),
        ev.CrossRefAdded(ref_id="xref_1", from_id="ctx_side", to_id="ctx_root", kind="see"),
    ]
    db.execute("BEGIN")
    prev = "0" * 64
    for seq, event in enumerate(events, 1):
        record = Record(seq=seq, ts=TS, actor=ACTOR, event=event, prev=prev, hash=f"{seq:064x}")
        apply(db, record)
        prev = record.hash
    db.execute("COMMIT")
    return db


def _raises(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """The name and the id of the error `fn` raises."""
    with pytest.raises(TimelinedError) as info:
        fn(*args, **kwargs)
    return info.value.name, info.value.params["id"]


def test_found_is_what_the_query_returns(conn: sqlite3.Connection) -> None:
    assert lookup.conversation_or_raise(conn, "conv_a") == q.get_conversation(conn, "conv_a")
    assert lookup.context_or_raise(conn, "ctx_side") == q.get_context(conn, "ctx_side")
    side = lookup.context_or_raise(conn, "ctx_side", crossrefs=False)
    assert side == q.get_context(conn, "ctx_side", crossrefs=False)
    assert [r.id for r in lookup.context_or_raise(conn, "ctx_side").crossrefs] == ["xref_1"]
    assert side.crossrefs == []
    assert lookup.block_or_raise(conn, "blk_1") == q.get_block(conn, "blk_1")
    assert lookup.crossref_or_raise(conn, "xref_1") == q.get_crossref(conn, "xref_1")
    assert [c.id for c in lookup.tree_or_raise(conn, "conv_a")[0]] == ["ctx_root", "ctx_side"]
    blocks, cursor = lookup.blocks_or_raise(
        conn,
        "ctx_root",
        limit=10,
        after=None,
        before=None,
        roles=None,
        since=None,
        until=None,
        reply_bytes=1 << 20,
    )
    assert ([b.id for b in blocks], cursor) == (["blk_1"], None)
    history = lookup.history_or_raise(conn, "ctx_root", limit=None, reply_bytes=1 << 20)
    assert [h.block.id for h in history] == ["blk_1"]
    hits = lookup.search_or_raise(
        conn, "hello", conversation_id="conv_a", context_id="ctx_root", role=None, limit=5
    )
    assert [h.block_id for h in hits] == ["blk_1"]
    assert lookup.stats_or_raise(conn, "conv_a") == q.conversation_stats(conn, "conv_a")


def test_missing_raises_the_named_error(conn: sqlite3.Connection) -> None:
    missing = {
        lookup.conversation_or_raise: ConversationNotFound("conv_x"),
        lookup.context_or_raise: ContextNotFound("ctx_x"),
        lookup.block_or_raise: BlockNotFound("blk_x"),
        lookup.crossref_or_raise: CrossRefNotFound("xref_x"),
        lookup.require_conversation: ConversationNotFound("conv_x"),
        lookup.require_context: ContextNotFound("ctx_x"),
        lookup.tree_or_raise: ConversationNotFound("conv_x"),
        lookup.stats_or_raise: ConversationNotFound("conv_x"),
    }
    for fn, want in missing.items():
        id = want.params["id"]
        assert _raises(fn, conn, id) == (want.name, id), fn.__name__
    page = {"limit": 1, "after": None, "before": None, "roles": None, "since": None}
    assert _raises(lookup.blocks_or_raise, conn, "ctx_x", **page, until=None, reply_bytes=100) == (
        "ContextNotFound",
        "ctx_x",
    )
    assert _raises(lookup.history_or_raise, conn, "ctx_x", limit=None, reply_bytes=100) == (
        "ContextNotFound",
        "ctx_x",
    )
    search = {"role": None, "limit": 5}
    assert _raises(
        lookup.search_or_raise, conn, "x", conversation_id="conv_x", context_id=None, **search
    ) == ("ConversationNotFound", "conv_x")
    assert _raises(
        lookup.search_or_raise, conn, "x", conversation_id="conv_a", context_id="ctx_x", **search
    ) == ("ContextNotFound", "ctx_x")


def test_a_revoked_crossref_is_not_found(conn: sqlite3.Connection) -> None:
    record = Record(
        seq=5,
        ts=TS,
        actor=ACTOR,
        event=ev.CrossRefRevoked(ref_id="xref_1"),
        prev="0" * 64,
        hash=f"{5:064x}",
    )
    conn.execute("BEGIN")
    apply(conn, record)
    conn.execute("COMMIT")
    assert _raises(lookup.crossref_or_raise, conn, "xref_1") == (
        "CrossRefNotFound",
        "xref_1",
    )


def _apply_all(conn: sqlite3.Connection, first_seq: int, events: list[ev.Event]) -> None:
    conn.execute("BEGIN")
    for seq, event in enumerate(events, first_seq):
        record = Record(seq=seq, ts=TS, actor=ACTOR, event=event, prev="0" * 64, hash="0" * 64)
        apply(conn, record)
    conn.execute("COMMIT")


# Every escape a reply writes: a quote, a backslash, short ones, \u00XX ones; and non-ASCII.
NOTE = 'q"b\\n\n\t\x01\x1f\x7f é—🙂 ' * 100


@pytest.fixture
def wide(conn: sqlite3.Connection) -> sqlite3.Connection:
    """`conn` with a third context, and ten references of ~2 KB notes from the side to it."""
    spawned = ev.ContextSpawned(
        context_id="ctx_other", conversation_id="conv_a", parent_id="ctx_root", reason="x"
    )
    refs = [
        ev.CrossRefAdded(
            ref_id=f"xref_w{i}", from_id="ctx_side", to_id="ctx_other", kind="k", note=NOTE
        )
        for i in range(10)
    ]
    _apply_all(conn, 5, [spawned, *refs])
    return conn


def test_crossref_bytes_are_what_the_reply_encodes(wide: sqlite3.Connection) -> None:
    for context_id in ("ctx_root", "ctx_side", "ctx_other"):
        found = q.get_context(wide, context_id)
        assert found is not None
        assert q.crossref_bytes(wide, context_id) == sum(item_size(r) for r in found.crossrefs)
    assert q.crossref_bytes(wide, "ctx_nope") == 0


def test_a_tree_page_ends_before_a_context_whose_references_do_not_fit(
    wide: sqlite3.Connection,
) -> None:
    sizes = [item_size(c) for c in q.get_tree(wide, "conv_a")]
    assert sizes[1] > 20_000 and sizes[0] < 2_000  # the side holds all eleven references

    # Room for the root and not the side: the page ends, the cursor names where it did.
    budget = ReplyBudget(REPLY_ENVELOPE + sizes[0] + sizes[1] - 1)
    page, after = q.tree_page(wide, "conv_a", budget=budget)
    assert [c.id for c in page] == ["ctx_root"] and after is not None and budget.full
    # A page that cannot hold the side alone refuses it by name.
    with pytest.raises(LimitExceeded) as refused:
        q.tree_page(wide, "conv_a", after=after, budget=ReplyBudget(REPLY_ENVELOPE + 8_000))
    assert refused.value.params["limit"] == REPLY_LIMIT
    # Enough room: the rest, in order.
    page, rest = q.tree_page(wide, "conv_a", after=after, budget=ReplyBudget(1 << 20))
    assert [c.id for c in page] == ["ctx_side", "ctx_other"] and rest is None


def test_a_tree_page_for_a_reader_omits_the_references_of_a_context_too_large_alone(
    wide: sqlite3.Connection,
) -> None:
    """GetTree's page: a context whose references do not fit a page alone comes without them
    (`crossrefs_omitted`), rather than making the rest of the tree unreadable; the export's
    page (no `omit_crossrefs`) still refuses it, whole or not at all."""
    sizes = [item_size(c) for c in q.get_tree(wide, "conv_a")]
    page, after = q.tree_page(
        wide, "conv_a", budget=ReplyBudget(REPLY_ENVELOPE + sizes[0] + 100), omit_crossrefs=True
    )
    assert [c.id for c in page] == ["ctx_root"] and after is not None
    small = ReplyBudget(REPLY_ENVELOPE + 8_000)
    page, rest = q.tree_page(wide, "conv_a", after=after, budget=small, omit_crossrefs=True)
    side = page[0]
    assert side.id == "ctx_side" and side.crossrefs_omitted and side.crossrefs == []
    assert small.used <= small.maximum  # what was left out was not counted
    # The next context's references (ten, to it) do not fit that page either: it starts the
    # next page, where it comes without them too.
    assert [c.id for c in page] == ["ctx_side"] and rest is not None
    page, rest = q.tree_page(
        wide, "conv_a", after=rest, budget=ReplyBudget(REPLY_ENVELOPE + 8_000), omit_crossrefs=True
    )
    assert [(c.id, c.crossrefs_omitted) for c in page] == [("ctx_other", True)] and rest is None
    # Enough room: every context with its references, none omitted.
    whole, _ = q.tree_page(wide, "conv_a", budget=ReplyBudget(1 << 20), omit_crossrefs=True)
    assert not any(c.crossrefs_omitted for c in whole) and len(whole[1].crossrefs) == 11


def test_get_context_omits_references_that_do_not_fit_the_reply(wide: sqlite3.Connection) -> None:
    whole = q.get_context(wide, "ctx_side")
    assert whole is not None and len(whole.crossrefs) == 11 and not whole.crossrefs_omitted
    assert q.get_context(wide, "ctx_side", reply_bytes=1 << 20) == whole
    found = q.get_context(wide, "ctx_side", reply_bytes=REPLY_ENVELOPE + 8_000)
    assert found is not None and found.crossrefs_omitted and found.crossrefs == []
    assert found == msgspec.structs.replace(whole, crossrefs=[], crossrefs_omitted=True)
    # Exactly at the bound (the parts counted as read: one separator more than the whole's
    # encoding), the references fit and are sent.
    exact = REPLY_ENVELOPE + item_size(whole) + 1
    assert q.get_context(wide, "ctx_side", reply_bytes=exact) == whole
    assert q.get_context(wide, "ctx_side", reply_bytes=exact - 1) == found
    # A context whose own fields do not fit is still refused by name.
    with pytest.raises(LimitExceeded):
        q.get_context(wide, "ctx_side", reply_bytes=REPLY_ENVELOPE + 10)


def test_crossrefs_page_through_a_contexts_references_in_order(wide: sqlite3.Connection) -> None:
    every = q.get_context(wide, "ctx_side")
    assert every is not None
    seen: list[ev.Event | Any] = []
    after: int | None = None
    while True:
        page, after = lookup.crossrefs_or_raise(
            wide, "ctx_side", after=after, limit=3, reply_bytes=1 << 20
        )
        seen.extend(page)
        assert len(page) <= 3
        if after is None:
            break
    assert seen == every.crossrefs  # from it and to it, in the order they were added
    # Bounded by bytes too: a page ends before the reference that would pass the reply.
    one = item_size(every.crossrefs[1])
    page, after = q.crossrefs_page(
        wide, "ctx_side", budget=ReplyBudget(REPLY_ENVELOPE + item_size(every.crossrefs[0]) + one)
    )
    assert page == every.crossrefs[:2] and after is not None
    with pytest.raises(LimitExceeded):  # one that fits no reply alone is refused by name
        q.crossrefs_page(wide, "ctx_side", after=after, budget=ReplyBudget(REPLY_ENVELOPE + 10))
    # Revoked references are not listed; an unknown context is named.
    wide.execute("UPDATE crossrefs SET revoked_seq = 99 WHERE id = 'xref_1'")
    assert [r.id for r in q.crossrefs_page(wide, "ctx_side")[0]] == [
        r.id for r in every.crossrefs[1:]
    ]
    with pytest.raises(ContextNotFound):
        lookup.crossrefs_or_raise(wide, "ctx_nope", reply_bytes=1 << 20)
