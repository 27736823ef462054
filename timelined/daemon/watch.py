"""Watch: stream committed events to clients — first the catch-up from the log, then live.

Contract:

- A watcher subscribes BEFORE it reads the catch-up, and the catch-up reads the log up to the
  seq acknowledged at that moment (`head`: a client sees its own write, even while the write's
  commit is still running); live records at or below `head` are skipped. So the
  stream has no gap and no repeat, whatever commits while the catch-up is read.
- The catch-up ends with a batch marked `live` (empty when nothing new has committed yet): from
  there on every event is sent as it commits. A watcher that passes no `after_seq` gets that
  marker at once — the moment from which it misses nothing.
- Every watcher has a bounded buffer. The writer never waits for a watcher: when a watcher's
  buffer is full it is marked, what it buffered is dropped, and at its next read its stream ends
  with `io.timelined.SlowConsumer`, naming how far behind it was; it can reconnect with
  `after_seq` (the last seq it saw) and lose nothing.
- Events are sent as the log holds them, byte for byte (`seq`, `ts`, `type`, `actor`, `data`,
  `prev`, `hash`), so a watcher can verify each event's hash with the log-format rule.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import AsyncGenerator, Iterator
from itertools import islice
from typing import NamedTuple

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from timelined import events as ev
from timelined.api import LogEvent
from timelined.auditlog.reader import read_lines
from timelined.auditlog.record import decode_content, encode_record
from timelined.errors import SlowConsumer
from timelined.events import Record
from timelined.state.lookup import require_conversation
from timelined.writer.engine import Engine

__all__ = [
    "CATCH_UP_CHUNK",
    "DEFAULT_BUFFER_RECORDS",
    "MAX_BATCH_EVENTS",
    "LogEvent",
    "WatchBatch",
    "WatchHub",
    "to_log_event",
]

CATCH_UP_CHUNK = 1000
DEFAULT_BUFFER_RECORDS = 10_000
MAX_BATCH_EVENTS = 256  # events per reply on the socket: small batches, one write each

_log_event = msgspec.json.Decoder(LogEvent)


class WatchBatch(NamedTuple):
    """Some events in seq order: log lines without their newline. `live`: the catch-up is
    over (this batch and all later ones were committed after the watch started)."""

    lines: list[bytes]
    live: bool


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

    async def mask(self, records: list[Record]) -> list[bool]:
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
            out.append(conv == self.conversation_id)
        return out


class _Batch:
    """One committed batch, shared by every watcher; its log lines are encoded once, on demand
    (by the first watcher that sends them), never on the writer's path."""

    __slots__ = ("_lines", "records")

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self._lines: list[bytes | None] = [None] * len(records)

    def line(self, i: int) -> bytes:
        found = self._lines[i]
        if found is None:
            r = self.records[i]
            # The writer made the line with this very function from these very values: the
            # same bytes again. The hash proves it.
            again, line = encode_record(r.seq, r.ts, r.actor, r.event, r.prev)
            if again.hash != r.hash:
                raise RuntimeError(f"re-encoding event {r.seq} did not reproduce its hash")
            found = self._lines[i] = line[:-1]
        return found


class _Subscription:
    """A watcher's buffer, bounded in records (not batches): memory stays bounded."""

    def __init__(self, max_records: int) -> None:
        send: MemoryObjectSendStream[_Batch]
        receive: MemoryObjectReceiveStream[_Batch]
        send, receive = anyio.create_memory_object_stream[_Batch](math.inf)
        self.send = send
        self.receive = receive
        self.max_records = max_records
        self.buffered = 0
        self.overflowed = False
        self.behind = 0

    def offer(self, batch: _Batch) -> bool:
        """Buffer the batch; False when the watcher overflows now (and is dropped)."""
        if self.overflowed:
            return False
        n = len(batch.records)
        # A batch larger than the whole buffer (an import) still fits an empty one: the batch
        # is shared by every watcher, so taking it costs no memory of its own.
        if self.buffered and self.buffered + n > self.max_records:
            self.overflowed = True
            self.behind = self.buffered + n
            self.send.close()
            # Free what it buffered now: the watcher will not be sent it (it reconnects).
            while True:
                try:
                    self.receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            self.buffered = 0
            return False
        self.buffered += n
        self.send.send_nowait(batch)
        return True

    def taken(self, batch: _Batch) -> None:
        self.buffered -= len(batch.records)


def _split(lines: list[bytes], size: int) -> Iterator[list[bytes]]:
    for start in range(0, len(lines), size):
        yield lines[start : start + size]


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
        if self._subs:
            batch = _Batch(records)
            for sub in list(self._subs):
                if not sub.offer(batch):
                    # Dropped now: no longer fed nor counted; told at its next read.
                    self._subs.discard(sub)
                    self.dropped += 1

    @staticmethod
    def _drop(sub: _Subscription) -> SlowConsumer:
        return SlowConsumer(sub.behind)

    async def watch_batches(
        self,
        conversation_id: str | None = None,
        after_seq: int | None = None,
        max_events: int = MAX_BATCH_EVENTS,
    ) -> AsyncGenerator[WatchBatch, None]:
        """Batches of log lines past `after_seq` (from the log), then of every new event as
        it commits; the first batch after the catch-up is marked live (and may be empty)."""
        if conversation_id is not None:
            await self.engine.read(require_conversation, conversation_id)
        sub = _Subscription(self.buffer_records)
        self._subs.add(sub)
        # Acknowledged now (in the log; its commit may still be running): the catch-up reads
        # the log up to it, and later batches arrive through `sub` as they commit.
        head = self.engine.acked_seq
        keep = _Filter(self.engine, conversation_id) if conversation_id else None
        try:
            if after_seq is not None and after_seq < head:
                it = read_lines(self.engine.config.log_dir, after_seq=after_seq, upto_seq=head)

                def chunk() -> tuple[list[bytes], list[Record] | None]:
                    lines = [line[:-1] for _, line in islice(it, CATCH_UP_CHUNK)]
                    records = [decode_content(c) for c in lines] if keep else None
                    return lines, records

                while True:
                    lines, records = await anyio.to_thread.run_sync(chunk)
                    if sub.overflowed:
                        raise self._drop(sub)
                    if not lines:
                        break
                    if keep is not None and records is not None:
                        mask = await keep.mask(records)
                        lines = [c for c, kept in zip(lines, mask, strict=True) if kept]
                    for part in _split(lines, max_events):
                        yield WatchBatch(part, False)
            floor = head if after_seq is None else max(head, after_seq)
            pending: list[bytes] = []
            marker = True  # the live marker goes out at once, even empty
            while True:
                if sub.overflowed:
                    raise self._drop(sub)
                if marker or (pending and not sub.buffered):
                    yield WatchBatch(pending, True)
                    pending = []
                    marker = False
                    continue
                try:
                    batch = await sub.receive.receive()
                except anyio.EndOfStream:
                    raise self._drop(sub) from None
                sub.taken(batch)
                fresh = [i for i, r in enumerate(batch.records) if r.seq > floor]
                if keep is not None and fresh:
                    mask = await keep.mask([batch.records[i] for i in fresh])
                    fresh = [i for i, kept in zip(fresh, mask, strict=True) if kept]
                pending.extend(batch.line(i) for i in fresh)
                while len(pending) >= max_events:  # batches already waiting are coalesced
                    yield WatchBatch(pending[:max_events], True)
                    pending = pending[max_events:]
                    if sub.overflowed:
                        raise self._drop(sub)
        finally:
            self._subs.discard(sub)
            sub.send.close()

    async def watch(
        self, conversation_id: str | None = None, after_seq: int | None = None
    ) -> AsyncGenerator[LogEvent, None]:
        """Events past `after_seq` (from the log), then every new one as it commits."""
        batches = self.watch_batches(conversation_id, after_seq)
        try:
            async for batch in batches:
                for line in batch.lines:
                    yield _log_event.decode(line)
        finally:
            await batches.aclose()
