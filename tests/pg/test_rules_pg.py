"""The writer's rules (writer/rules.py, writer/hotstate.py) checking commands on PostgreSQL.

A minimal Tx does what the engine's does per command (a savepoint, the rule, apply): the
commands are accepted or refused by name exactly as on SQLite, and the events they emit, replayed
into SQLite, give the state PostgreSQL holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import dump_state
from timelined import commands as cmd
from timelined import events as ev
from timelined.auditlog.record import GENESIS_PREV, encode_record
from timelined.config import LimitsConfig
from timelined.errors import TimelinedError
from timelined.events import Actor, Record
from timelined.pgstore import schema
from timelined.pgstore import sql as pgsql
from timelined.state.apply import apply, set_meta
from timelined.state.db import open_scratch
from timelined.state.dbapi import DbConn
from timelined.writer import rules
from timelined.writer.hotstate import HotState

TS = "2026-02-03T04:05:06.000007Z"
ACTOR = Actor(uid=1000, gid=1000, pid=7)


class PlainTx:
    """The engine's per-command Tx, without the engine: emit encodes, applies, keeps."""

    def __init__(self, conn: DbConn, hot: HotState, records: list[Record]) -> None:
        self._conn = conn
        self._hot = hot
        self._limits = LimitsConfig()
        self.records = records

    @property
    def conn(self) -> DbConn:
        return self._conn

    @property
    def limits(self) -> LimitsConfig:
        return self._limits

    @property
    def hot(self) -> HotState:
        return self._hot

    def emit(self, event: ev.Event, data: bytes | None = None) -> Record:
        last = self.records[-1] if self.records else None
        record, _ = encode_record(
            (last.seq if last else 0) + 1,
            TS,
            ACTOR,
            event,
            last.hash if last else GENESIS_PREV,
            data,
        )
        apply(self._conn, record)
        self._hot.observe(event)
        self.records.append(record)
        return record


class Writer:
    def __init__(self, conn: DbConn) -> None:
        self.conn = conn
        self.hot = HotState()
        self.records: list[Record] = []

    def run(self, command: cmd.Command) -> Any:
        """One command in its own transaction and savepoint: its result, or its refusal as
        (error name, params)."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SAVEPOINT command")
        before = len(self.records)
        try:
            result = rules.execute(PlainTx(conn, self.hot, self.records), command, TS)
        except TimelinedError as exc:
            conn.execute("ROLLBACK TO command")
            conn.execute("RELEASE command")
            conn.execute("ROLLBACK")
            del self.records[before:]
            self.hot.clear()
            return (exc.name, exc.params)
        conn.execute("RELEASE command")
        if self.records:
            set_meta(conn, self.records[-1].seq, self.records[-1].hash)
        conn.execute("COMMIT")
        return result


def script(w: Writer) -> list[Any]:
    """Accepted and refused commands of every kind; returns every answer."""
    out: list[Any] = []
    conv = w.run(cmd.CreateConversation(name="rules · ü", metadata={"k": [1]}))
    root = conv.root_context_id
    out.append(conv)
    for i in range(4):
        out.append(w.run(cmd.AppendBlock(context_id=root, role="user", content=f"b{i} 50% ?")))
    out.append(
        w.run(
            cmd.AppendBlocks(
                context_id=root,
                blocks=[cmd.NewBlock(role="assistant", content=c) for c in ("x", "y", "日本")],
            )
        )
    )
    side = w.run(cmd.SpawnSidebar(parent_id=root, reason="dig", inherit_last=3))
    out.append(side)
    out.append(w.run(cmd.AppendBlock(context_id=root, role="user", content="root is paused")))
    out.append(w.run(cmd.AppendBlock(context_id=side.id, role="tool", content="side")))
    out.append(w.run(cmd.SpawnSidebar(parent_id="ctx_missing000", reason="no")))
    deeper = w.run(cmd.SpawnSidebar(parent_id=side.id, reason="deeper"))
    out.append(w.run(cmd.ReparentContext(id=side.id, new_parent_id=deeper.id)))  # a cycle
    out.append(w.run(cmd.MergeContext(id=deeper.id, summary="done")))
    out.append(w.run(cmd.MergeContext(id=deeper.id)))  # merged already
    out.append(w.run(cmd.PauseContext(id=side.id)))
    out.append(w.run(cmd.ResumeContext(id=side.id)))
    out.append(w.run(cmd.ArchiveContext(id=side.id, reason="r")))
    out.append(w.run(cmd.AppendBlock(context_id=side.id, role="user", content="archived")))
    out.append(w.run(cmd.RestoreContext(id=side.id)))
    out.append(w.run(cmd.Focus(context_id=side.id)))
    out.append(w.run(cmd.SetTags(context_id=side.id, tags=["a", "ü"])))
    ref = w.run(cmd.AddCrossRef(from_id=side.id, to_id=root, kind="see", note="n"))
    out.append(ref)
    out.append(w.run(cmd.RevokeCrossRef(id=ref.id)))
    out.append(w.run(cmd.RevokeCrossRef(id=ref.id)))
    first = out[1].block
    out.append(w.run(cmd.RetractBlock(id=first.id, reason="oops")))
    out.append(w.run(cmd.RetractBlock(id=first.id, reason="oops")))  # a safe retry
    out.append(w.run(cmd.AppendBlock(context_id=side.id, role="user", content="x", id=first.id)))
    other = w.run(cmd.CreateConversation(name="other"))
    out.append(w.run(cmd.ReparentContext(id=side.id, new_parent_id=other.root_context_id)))
    out.append(w.run(cmd.UpdateConversation(id=conv.id, name="renamed")))
    out.append(w.run(cmd.ArchiveConversation(id=other.id, reason="bye")))
    out.append(
        w.run(cmd.AppendBlock(context_id=other.root_context_id, role="user", content="late"))
    )
    return out


def _shape(answer: Any) -> Any:
    """An answer without what differs run to run (ids drawn at random): its kind."""
    if isinstance(answer, tuple):
        return answer[0]  # the refusal's name
    return type(answer).__name__


@pytest.fixture
def pg_writer(pg_dsn: str) -> Iterator[Writer]:
    with pgsql.connect(pg_dsn) as conn:
        schema.ensure_schema(conn)
        yield Writer(conn)


def test_rules_answer_the_same_on_both(pg_writer: Writer) -> None:
    lite = Writer(open_scratch(":memory:"))
    want = [_shape(a) for a in script(lite)]
    got = [_shape(a) for a in script(pg_writer)]
    assert got == want
    # the script is accepted and refused in every way it was written for
    assert {"ContextNotFound", "InvalidTransition", "CycleError", "BlockIdConflict"} <= set(want)
    assert {"Conversation", "Context", "AppendResult", "AppendBlocksReply", "CrossRef"} <= set(want)
    assert len(pg_writer.records) == len(lite.records)


def test_events_written_on_postgres_replay_to_its_state(pg_writer: Writer) -> None:
    script(pg_writer)
    replayed = open_scratch(":memory:")
    replayed.execute("BEGIN")
    for record in pg_writer.records:
        apply(replayed, record)
    last = pg_writer.records[-1]
    set_meta(replayed, last.seq, last.hash)
    replayed.execute("COMMIT")
    assert dump_state(pg_writer.conn) == dump_state(replayed)
