"""Watch: stream committed events to clients — first the catch-up from the log, then live.

Contract:

- A watcher subscribes BEFORE it reads the catch-up, and the catch-up reads the log up to the
  seq acknowledged at that moment (`head`: a client sees its own write, even while the write's
  commit is still running); live records at or below `head` are skipped. So the
  stream has no gap and no repeat, whatever commits while the catch-up is read.
- The catch-up ends with a batch marked `live` (empty when nothing new has committed yet): from
  there on every event is sent as it commits. A watcher that passes no `after_seq` gets that
  marker at once — the moment from which it misses nothing.
- Every reply fits one frame (`limits.max_message_bytes`, counted by `replies.ReplyBudget`):
  a batch's events are spread over as many replies as needed. The catch-up is read from the log
  one reply at a time, in a worker thread, and the next is read only once the server has
  written the previous one to the socket (the server pulls the next reply only then), so a
  watcher that does not read costs one reply, not the log. A log line too big for a frame of its
  own (written under an earlier, larger `max_block_bytes`; config.py keeps new ones smaller)
  ends the stream with LimitExceeded naming `limits.max_message_bytes`: never a larger frame.
- Every watcher has a bounded buffer, in events and in bytes (`limits.max_connection_buffer_bytes`
  each; all of them together count in the daemon-wide `limits.max_buffered_bytes`, and each in
  its peer's uid's share, `limits.max_buffered_bytes_per_uid`). The writer never waits for a
  watcher: when a watcher's buffer is full, or the daemon-wide budget or its uid's share has no
  room for the next batch, it is marked, what it buffered is
  dropped, and at its next read its stream ends with `io.timelined.Timeline.SlowConsumer`,
  naming how far behind it was; it can reconnect with `after_seq` (the last seq it saw) and lose
  nothing.
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
from timelined.auditlog.record import decode_content
from timelined.auditlog.source import LogSource
from timelined.errors import SlowConsumer
from timelined.events import Record
from timelined.replies import ReplyBudget, handed
from timelined.state.lookup import require_conversation
from timelined.varlink.budget import ByteBudget
from timelined.writer.engine import Engine

__all__ = [
    "DEFAULT_BUFFER_RECORDS",
    "MAX_BATCH_EVENTS",
    "LogEvent",
    "WatchBatch",
    "WatchHub",
    "to_log_event",
]

DEFAULT_BUFFER_RECORDS = 10_000
DEFAULT_BUFFER_BYTES = 64 * 1024 * 1024
DEFAULT_REPLY_BYTES = 16 * 1024 * 1024
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
    """One committed batch, shared by every watcher: its records and the log lines the writer
    wrote for them (without their newline)."""

    __slots__ = ("lines", "records", "size")

    def __init__(self, records: list[Record], lines: list[bytes]) -> None:
        self.records = records
        self.lines = [line[:-1] for line in lines]
        self.size = sum(len(line) for line in self.lines)

    def line(self, i: int) -> bytes:
        return self.lines[i]


class _Subscription:
    """A watcher's buffer, bounded in records and in bytes (not batches); its bytes also count
    in the daemon-wide budget `shared`, and in the share of its peer's uid `owner` there."""

    def __init__(
        self, max_records: int, max_bytes: int, shared: ByteBudget, owner: int | None = None
    ) -> None:
        send: MemoryObjectSendStream[_Batch]
        receive: MemoryObjectReceiveStream[_Batch]
        send, receive = anyio.create_memory_object_stream[_Batch](math.inf)
        self.send = send
        self.receive = receive
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.shared = shared
        # A uid's watchers count in its share like its other buffers, so that one uid's
        # lagging watchers cannot fill the daemon-wide budget for everyone else.
        self.owner = owner
        self.buffered = 0
        self.buffered_bytes = 0
        self.overflowed = False
        self.behind = 0

    def offer(self, batch: _Batch) -> bool:
        """Buffer the batch; False when the watcher overflows now (and is dropped)."""
        if self.overflowed:
            return False
        n = len(batch.records)
        size = batch.size
        # A batch larger than the whole buffer (an import) still fits an empty one: the batch
        # is shared by every watcher, so taking it costs no memory of its own.
        if self.buffered and (
            self.buffered + n > self.max_records
            or self.buffered_bytes + size > self.max_bytes
            or not self.shared.try_take(size, self.owner)
        ):
            self.overflowed = True
            self.behind = self.buffered + n
            self.send.close()
            # Free what it buffered now: the watcher will not be sent it (it reconnects).
            while True:
                try:
                    self.receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            self.shared.give(self.buffered_bytes, self.owner)
            self.buffered = 0
            self.buffered_bytes = 0
            return False
        if not self.buffered:
            self.shared.count(size, self.owner)
        self.buffered += n
        self.buffered_bytes += size
        self.send.send_nowait(batch)
        return True

    def taken(self, batch: _Batch) -> None:
        self.buffered -= len(batch.records)
        self.buffered_bytes -= batch.size
        self.shared.give(batch.size, self.owner)

    def close(self) -> None:
        self.send.close()
        self.shared.give(self.buffered_bytes, self.owner)
        self.buffered_bytes = 0


class _Pager:
    """The log's lines past a seq, one reply's worth per call (in a worker thread): at most
    `max_events` lines and `max_bytes` of reply; the line that did not fit starts the next."""

    def __init__(self, lines: Iterator[tuple[int, bytes]], max_bytes: int, max_events: int):
        self._lines = lines
        self._held: bytes | None = None
        self.max_bytes = max_bytes
        self.max_events = max_events

    def page(self) -> list[bytes]:
        budget = ReplyBudget(self.max_bytes)
        out: list[bytes] = []
        while len(out) < self.max_events:
            line = self._held
            self._held = None
            if line is None:
                item = next(self._lines, None)
                if item is None:
                    break
                line = item[1][:-1]
            if not budget.add(len(line) + 1):  # the comma between events
                self._held = line
                break
            out.append(line)
        return out


def _reply_size(lines: list[bytes], max_bytes: int, max_events: int) -> int:
    """How many of `lines`, from the first, one reply holds."""
    budget = ReplyBudget(max_bytes)
    n = 0
    for line in islice(lines, max_events):
        if not budget.add(len(line) + 1):
            break
        n += 1
    return n


class WatchHub:
    """Fans answered batches (in the log) out to watchers without ever blocking the writer."""

    def __init__(
        self,
        engine: Engine,
        log: LogSource,
        buffer_records: int = DEFAULT_BUFFER_RECORDS,
        shared: ByteBudget | None = None,
    ) -> None:
        self.engine = engine
        self.log = log
        self.buffer_records = buffer_records
        self.shared = shared if shared is not None else ByteBudget()
        self._subs: set[_Subscription] = set()
        self.dropped = 0
        engine.subscribe(self._publish)

    @property
    def watchers(self) -> int:
        return len(self._subs)

    def _publish(self, records: list[Record], lines: list[bytes]) -> None:
        if self._subs:
            batch = _Batch(records, lines)
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
        *,
        reply_bytes: int = DEFAULT_REPLY_BYTES,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        owner: int | None = None,
    ) -> AsyncGenerator[WatchBatch, None]:
        """Batches of log lines past `after_seq` (from the log), then of every new event as
        it commits; the first batch after the catch-up is marked live (and may be empty).
        Each batch's reply holds at most `reply_bytes`; the live buffer `buffer_bytes`,
        counted in the share of uid `owner` (None: in the daemon-wide budget only)."""
        if conversation_id is not None:
            await self.engine.read(require_conversation, conversation_id)
        sub = _Subscription(self.buffer_records, buffer_bytes, self.shared, owner)
        self._subs.add(sub)
        # Acknowledged now (in the log; its commit may still be running): the catch-up reads
        # the log up to it, and later batches arrive through `sub` as they commit.
        head = self.engine.acked_seq
        keep = _Filter(self.engine, conversation_id) if conversation_id else None
        try:
            if after_seq is not None and after_seq < head:
                pager = _Pager(
                    self.log.lines(after_seq, head),
                    reply_bytes,
                    max_events,
                )

                def chunk() -> tuple[list[bytes], list[Record] | None]:
                    lines = pager.page()
                    records = [decode_content(c) for c in lines] if keep else None
                    return lines, records

                while True:
                    # One reply per read: the server asks for the next only once this one is
                    # written to the socket, so an unread watcher holds one reply, not the log.
                    lines, records = await anyio.to_thread.run_sync(chunk)
                    if sub.overflowed:
                        raise self._drop(sub)
                    if not lines:
                        break
                    if keep is not None and records is not None:
                        mask = await keep.mask(records)
                        lines = [c for c, kept in zip(lines, mask, strict=True) if kept]
                    if lines:
                        records = None  # decoded for the filter only
                        yield WatchBatch(handed(lines), False)
            floor = head if after_seq is None else max(head, after_seq)
            pending: list[bytes] = []
            pending_bytes = 0
            marker = True  # the live marker goes out at once, even empty
            while True:
                if sub.overflowed:
                    raise self._drop(sub)
                if marker or (pending and not sub.buffered):
                    n = _reply_size(pending, reply_bytes, max_events) if pending else 0
                    yield WatchBatch(pending[:n], True)
                    pending_bytes -= sum(len(line) + 1 for line in pending[:n])
                    del pending[:n]
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
                for i in fresh:
                    line = batch.line(i)
                    pending.append(line)
                    pending_bytes += len(line) + 1
                # Batches already waiting are coalesced, one full reply at a time.
                while len(pending) >= max_events or pending_bytes >= reply_bytes:
                    n = _reply_size(pending, reply_bytes, max_events)
                    yield WatchBatch(pending[:n], True)
                    pending_bytes -= sum(len(line) + 1 for line in pending[:n])
                    del pending[:n]
                    if sub.overflowed:
                        raise self._drop(sub)
        finally:
            self._subs.discard(sub)
            sub.close()

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
