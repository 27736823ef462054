"""state.apply's BlockRows (blocks handed on as rows, the verifier's replay) and StagedBlocks
(the writer's blocks inserted a batch at a time) against per-event apply (blocks inserted one by
one): the same rows, in the same order, and the same other tables."""

from __future__ import annotations

import sqlite3
from typing import Any

import hypothesis.strategies as st
from hypothesis import given, settings

from tests.helpers import dump_state
from timelined import events as ev
from timelined.events import Actor, Record
from timelined.state.apply import (
    BLOCK_COLUMNS,
    BlockRow,
    BlockRows,
    StagedBlocks,
    _block_row,
    apply,
    dump_json,
)
from timelined.state.schema import migrate

ACTOR = Actor(uid=1000, gid=1000, pid=4242)


class _Rows(sqlite3.Connection):
    block_rows: BlockRows | None = None
    search_index = False


def _db(factory: type[sqlite3.Connection] = sqlite3.Connection) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None, factory=factory)
    migrate(conn)
    return conn


def test_block_columns_are_the_schemas() -> None:
    conn = _db()
    columns = tuple(str(c[1]) for c in conn.execute("PRAGMA table_info(blocks)"))
    assert columns == BLOCK_COLUMNS


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_metadata = st.dictionaries(
    st.text(max_size=6), st.one_of(st.none(), st.integers(), st.text(max_size=6)), max_size=3
)
_block = st.tuples(
    st.integers(0, 1_000),  # which context (modulo the contexts there are)
    st.sampled_from(["user", "assistant", "system", "tool"]),
    _text,
    st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 10)),
    st.one_of(st.none(), st.integers(0, 2**40)),
    _metadata,
    st.lists(st.tuples(st.sampled_from(["tool_call", "thought"]), _text), max_size=2),
)
_step = st.one_of(
    st.tuples(st.just("conversation")),
    st.tuples(st.just("spawn"), st.integers(0, 1_000), st.integers(0, 5)),
    st.tuples(st.just("block"), _block),
    st.tuples(st.just("merge"), st.integers(0, 1_000), _text),
    st.tuples(st.just("focus"), st.integers(0, 1_000)),
)


def _records(steps: list[tuple[Any, ...]]) -> list[Record]:
    """A valid stream: references only to what exists, unique ids, merges of open sidebars."""
    records: list[Record] = []
    contexts: list[tuple[str, str]] = []  # (context id, conversation id)
    sidebars: dict[str, str] = {}  # open sidebar -> its parent
    counts: dict[str, int] = {}

    def add(event: ev.Event) -> None:
        # As a replay sees it: through the log's encoding (an int time_taken becomes a float).
        event = ev.decode_data(event.type_name, ev.encode_data(event))
        seq = len(records) + 1
        prev = records[-1].hash if records else "0" * 64
        ts = f"2026-11-22T10:00:{seq % 60:02d}.{seq:06d}Z"
        records.append(
            Record(seq=seq, ts=ts, actor=ACTOR, event=event, prev=prev, hash=f"{seq:064x}")
        )

    for step in [("conversation",), *steps]:
        seq = len(records) + 1
        kind = step[0]
        if kind == "conversation":
            conv, root = f"conv_{seq}", f"ctx_{seq}"
            add(ev.ConversationCreated(conversation_id=conv, name=f"c{seq}", root_context_id=root))
            contexts.append((root, conv))
        elif kind == "spawn":
            parent, conv = contexts[step[1] % len(contexts)]
            child = f"ctx_{seq}"
            add(
                ev.ContextSpawned(
                    context_id=child,
                    conversation_id=conv,
                    parent_id=parent,
                    reason="sidebar",
                    inherit_last=step[2],
                    parent_blocks=counts.get(parent, 0),
                )
            )
            contexts.append((child, conv))
            sidebars[child] = parent
        elif kind == "block":
            index, role, content, taken, tokens, metadata, subs = step[1]
            context = contexts[index % len(contexts)][0]
            block = ev.BlockData(
                id=f"blk_{seq}",
                context_id=context,
                role=role,
                content=content,
                timestamp=f"2026-11-22T10:00:00.{seq:06d}Z",
                time_taken=taken,
                tokens_input=tokens,
                tokens_output=tokens,
                metadata=metadata,
                sub_blocks=[ev.SubBlock(type=t, content=c) for t, c in subs],
            )
            add(ev.BlockAppended(block=block))
            counts[context] = counts.get(context, 0) + 1
        elif kind == "merge" and sidebars:
            child = sorted(sidebars)[step[1] % len(sidebars)]
            parent = sidebars.pop(child)
            add(
                ev.ContextMerged(
                    context_id=child,
                    parent_id=parent,
                    summary=step[2],
                    block_id=f"blk_{seq}",
                    block_count=counts.get(child, 0),
                )
            )
            counts[parent] = counts.get(parent, 0) + 1
        elif kind == "focus":
            add(ev.ContextFocused(context_id=contexts[step[1] % len(contexts)][0]))
    return records


@settings(max_examples=150, deadline=None)
@given(st.lists(_step, max_size=60))
def test_block_rows_equal_per_event_apply(steps: list[tuple[Any, ...]]) -> None:
    records = _records(steps)
    inserted = _db()
    handed: list[BlockRow] = []
    streamed = _db(_Rows)
    assert isinstance(streamed, _Rows)
    streamed.block_rows = BlockRows(handed.append)
    for conn in (inserted, streamed):
        conn.execute("BEGIN")
        for record in records:
            apply(conn, record)
        conn.execute("COMMIT")
    # The same block rows, in seq order, values and types alike.
    rows = inserted.execute("SELECT * FROM blocks ORDER BY seq").fetchall()
    assert handed == rows
    assert [tuple(map(type, r)) for r in handed] == [tuple(map(type, r)) for r in rows]
    # No block row in the streamed database; every other table the same.
    assert streamed.execute("SELECT count(*) FROM blocks").fetchone() == (0,)
    want, got = dump_state(inserted), dump_state(streamed)
    want.pop("blocks")
    got.pop("blocks")
    assert got == want


@settings(max_examples=150, deadline=None)
@given(st.lists(_step, max_size=60), st.lists(st.integers(0, 130), max_size=4))
def test_staged_block_rows_equal_per_event_apply(
    steps: list[tuple[Any, ...]], runs: list[int]
) -> None:
    """Blocks staged (positions counted per context, as the writer's cache does) and inserted
    before every other event and at the end: the state per-event apply makes. `runs` adds
    runs of blocks to one context, so that every chunk size of the multi-row INSERT is met."""
    run = ("block", (0, "user", "run", None, None, {}, []))
    records = _records(steps + [step for n in runs for step in [("focus", 0), *[run] * n]])
    inserted, staged_db = _db(), _db()
    staged, fts, positions = StagedBlocks(), [], dict[str, int]()
    for conn in (inserted, staged_db):
        conn.execute("BEGIN")
    for record in records:
        apply(inserted, record)
        event = record.event
        if isinstance(event, ev.BlockAppended):
            position = positions.get(event.block.context_id, 0) + 1
            staged.stage(record.seq, event.block, position, fts)
            positions[event.block.context_id] = position
            continue
        staged.insert(staged_db)
        apply(staged_db, record)
        if isinstance(event, ev.ContextMerged):
            positions[event.parent_id] = positions.get(event.parent_id, 0) + 1
    staged.insert(staged_db)
    assert len(staged) == 0
    for conn in (inserted, staged_db):
        conn.execute("COMMIT")
    assert dump_state(staged_db) == dump_state(inserted)
    blocks = [r for r in records if isinstance(r.event, ev.BlockAppended)]
    assert fts == [(r.seq, r.event.block.content) for r in blocks]  # type: ignore[attr-defined]


# No deadline (Hypothesis's default is 200 ms an example), like this file's other properties:
# a loaded machine can pause one example that long, and the rerun's "Unreliable test timings"
# fails the test.
@settings(deadline=None)
@given(_metadata, st.lists(st.tuples(st.sampled_from(["tool_call", "thought"]), _text), max_size=2))
def test_a_block_rows_json_columns_are_the_state_encoders_text(
    metadata: dict[str, Any], subs: list[tuple[str, str]]
) -> None:
    """Empty metadata and sub-blocks skip the encoder (`_block_row`): the same text as it gives."""
    block = ev.BlockData(
        id="blk_1",
        context_id="ctx_1",
        role="user",
        content="c",
        timestamp="2026-12-07T00:00:00.000000Z",
        metadata=metadata,
        sub_blocks=[ev.SubBlock(type=t, content=c) for t, c in subs],
    )
    row = dict(zip(BLOCK_COLUMNS, _block_row(7, block, None), strict=True))
    assert row["metadata"] == dump_json(block.metadata)
    assert row["sub_blocks"] == dump_json(block.sub_blocks)
