"""Watch: stream committed events to clients — first the catch-up from the log, then live.

Contract:

- A watcher subscribes BEFORE it reads the catch-up, and the catch-up reads up to the seq that
  was committed at that moment (`head`); live records at or below `head` are skipped. So the
  stream has no gap and no repeat, whatever commits while the catch-up is read.
- Every watcher has a bounded buffer. The writer never waits for a watcher: when a watcher's
  buffer is full it is marked and its stream ends with `io.timelined.SlowConsumer`, naming how
  far behind it was; it can reconnect with `after_seq` and lose nothing.
- Events are sent as the log holds them (`seq`, `ts`, `type`, `actor`, `data`, `prev`, `hash`),
  so a watcher can verify each event's hash with the log-format rule.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import AsyncIterator, Iterator
from itertools import islice
from typing import Any

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from timelined import events as ev
from timelined.auditlog import read_records
from timelined.engine import Engine
from timelined.errors import SlowConsumer
from timelined.events import Record

CATCH_UP_CHUNK = 1000
DEFAULT_BUFFER_RECORDS = 10_000


class LogEvent(msgspec.Struct, frozen=True):
    """One event as the log holds it."""

    seq: int
    ts: str
    type: str
    actor: dict[str, Any] | str
    data: dict[str, Any]
    prev: str
    hash: str


def to_log_event(record: Record) -> LogEvent:
    actor = record.actor if isinstance(record.actor, str) else msgspec.to_builtins(record.actor)
    return LogEvent(
        seq=record.seq,
        ts=record.ts,
        type=record.type,
        actor=actor,
        data=msgspec.to_builtins(record.event),
        prev=record.prev,
        hash=record.hash,
    )


def _subject(event: ev.Event) -> tuple[str | None, str | None]:
    """(conversation id if the event names it, else the context id it concerns)."""
    if isinstance(event, ev.ConversationCreated | ev.ConversationUpdated | ev.ConversationArchived):
        return event.conversation_id, None
    if isinstance(event, ev.ContextSpawned):
        return event.conversation_id, None
    if isinstance(event, ev.BlockAppended):
        return None, event.block.context_id
    if isinstance(event, ev.CrossRefAdded):
        return None, event.from_id
    if isinstance(event, ev.CrossRefRevoked):
        return None, None
    return None, getattr(event, "context_id", None)


def _conversations_of(conn: sqlite3.Connection, context_ids: list[str]) -> dict[str, str]:
    marks = ",".join("?" * len(context_ids))
    rows = conn.execute(
        f"SELECT id, conversation_id FROM contexts WHERE id IN ({marks})", context_ids
    ).fetchall()
    return {r[0]: r[1] for r in rows}


class _Filter:
    """Decides whether a record belongs to one conversation; learns context → conversation."""

    def __init__(self, engine: Engine, conversation_id: str) -> None:
        self.engine = engine
        self.conversation_id = conversation_id
        self.known: dict[str, str] = {}

    async def keep(self, records: list[Record]) -> list[Record]:
        unknown = []
        for r in records:
            conv, ctx = _subject(r.event)
            if isinstance(r.event, ev.ConversationCreated):
                self.known[r.event.root_context_id] = r.event.conversation_id
            elif isinstance(r.event, ev.ContextSpawned):
                self.known[r.event.context_id] = r.event.conversation_id
            if conv is None and ctx is not None and ctx not in self.known:
                unknown.append(ctx)
        if unknown:
            found = await self.engine.read(_conversations_of, sorted(set(unknown)))
            self.known.update(found)
        out = []
        for r in records:
            conv, ctx = _subject(r.event)
            if conv is None and ctx is not None:
                conv = self.known.get(ctx)
            if conv == self.conversation_id:
                out.append(r)
        return out


class _Subscription:
    """A watcher's buffer, bounded in records (not batches): memory stays bounded."""

    def __init__(self, max_records: int) -> None:
        send: MemoryObjectSendStream[list[Record]]
        receive: MemoryObjectReceiveStream[list[Record]]
        send, receive = anyio.create_memory_object_stream[list[Record]](math.inf)
        self.send = send
        self.receive = receive
        self.max_records = max_records
        self.buffered = 0
        self.overflowed = False
        self.behind = 0

    def offer(self, records: list[Record]) -> None:
        if self.overflowed:
            return
        if self.buffered + len(records) > self.max_records:
            self.overflowed = True
            self.behind = self.buffered + len(records)
            self.send.close()  # the watcher reads what is buffered, then gets SlowConsumer
            return
        self.buffered += len(records)
        self.send.send_nowait(records)

    def taken(self, records: list[Record]) -> None:
        self.buffered -= len(records)


class WatchHub:
    """Fans committed batches out to watchers without ever blocking the writer."""

    def __init__(self, engine: Engine, buffer_records: int = DEFAULT_BUFFER_RECORDS) -> None:
        self.engine = engine
        self.buffer_records = buffer_records
        self._subs: set[_Subscription] = set()
        self.dropped = 0
        engine.subscribe(self._publish)

    @property
    def watchers(self) -> int:
        return len(self._subs)

    def _publish(self, records: list[Record]) -> None:
        for sub in list(self._subs):
            sub.offer(records)

    async def watch(
        self, conversation_id: str | None = None, after_seq: int | None = None
    ) -> AsyncIterator[LogEvent]:
        """Events past `after_seq` (from the log), then every new one as it commits."""
        sub = _Subscription(self.buffer_records)
        self._subs.add(sub)
        head = self.engine.last_seq  # committed now; later commits arrive through `sub`
        keep = _Filter(self.engine, conversation_id) if conversation_id else None
        try:
            if after_seq is not None and after_seq < head:
                it: Iterator[Record] = read_records(
                    self.engine.config.log_dir, after_seq=after_seq, upto_seq=head
                )
                while True:
                    chunk = await anyio.to_thread.run_sync(lambda: list(islice(it, CATCH_UP_CHUNK)))
                    if not chunk:
                        break
                    for r in await keep.keep(chunk) if keep else chunk:
                        yield to_log_event(r)
            floor = head if after_seq is None else max(head, after_seq)
            async for batch in sub.receive:
                sub.taken(batch)
                fresh = [r for r in batch if r.seq > floor]
                for r in await keep.keep(fresh) if keep else fresh:
                    yield to_log_event(r)
            if sub.overflowed:
                self.dropped += 1
                raise SlowConsumer(sub.behind)
        finally:
            self._subs.discard(sub)
            sub.send.close()
