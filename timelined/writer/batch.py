"""A batch's pieces, shared by the engine on SQLite and on PostgreSQL: the queued command
(`Pending`), one command's view of the batch as the rules emit its events (`CommandTx`), what
a batch hands to the log's write (`BatchToLog`) and what it answers with (`Committed`), and the
writer's counters (`EngineStats`). engine.py owns when and where each runs."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from timelined import commands as cmd
from timelined.auditlog.record import encode_record
from timelined.config import LimitsConfig
from timelined.errors import TimelinedError
from timelined.events import ActorLike, BlockAppended, Event, Record
from timelined.histogram import BATCH_SIZE_BOUNDS, SECONDS_BOUNDS, Histogram
from timelined.state.apply import FtsRows, StagedBlocks, apply
from timelined.writer import rules
from timelined.writer.hotstate import HotState

# The engine's logger: a failing done callback is the engine's to report.
log = logging.getLogger("timelined.writer.engine")


@dataclass
class EngineStats:
    """Counters the metrics endpoint reads; mutated only by the writer (one batch at a time)."""

    commands: int = 0
    refused: int = 0
    events: int = 0
    batches: int = 0
    disk_full: int = 0
    state_commits: int = 0
    wal_checkpoints: int = 0
    inline_writes: int = 0
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BOUNDS))
    write_seconds: Histogram = field(default_factory=lambda: Histogram(SECONDS_BOUNDS))
    fsync_seconds: Histogram = field(default_factory=lambda: Histogram(SECONDS_BOUNDS))

    def observe(self, batch_size: int, write_s: float) -> None:
        self.batches += 1
        self.batch_sizes.observe(batch_size)
        self.write_seconds.observe(write_s)


class Committed(NamedTuple):
    """A logged batch: its records and their log lines as written (newline included)."""

    records: list[Record]
    lines: list[bytes]


NOTHING_COMMITTED = Committed([], [])


class BatchToLog(NamedTuple):
    """A batch whose commands have run, its log write still to make (`_write_batch`)."""

    batch: list[Pending]
    accepted: list[Pending]
    records: list[Record]
    lines: list[bytes]
    fts: FtsRows


Subscriber = Callable[[list[Record], list[bytes]], None]


class Pending:
    """A queued command; its outcome once the writer has answered it (`answered`)."""

    __slots__ = ("actor", "answered", "callback", "command", "error", "result")

    def __init__(self, command: cmd.Command, actor: ActorLike) -> None:
        self.command = command
        self.actor = actor
        self.callback: Callable[[], None] | None = None
        self.answered = False
        self.result: rules.Result | None = None
        self.error: TimelinedError | None = None

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call `callback()` on the event loop once answered (at once if it is); one only."""
        if self.answered:
            callback()
        else:
            self.callback = callback

    def outcome(self) -> rules.Result:
        """The result, or raises the command's named error (only once answered)."""
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def answer(self) -> None:
        if self.answered:
            return
        self.answered = True
        if self.callback is not None:
            try:
                self.callback()
            except Exception:
                log.exception("a command's done callback failed")


class CommandTx:
    """One command's view of the batch: emits events with seqs continuing the batch's."""

    __slots__ = (
        "_check_line",
        "_conn",
        "_hot",
        "_limits",
        "_staged",
        "actor",
        "fts",
        "lines",
        "prev",
        "records",
        "seq",
        "touched",
        "ts",
    )

    def __init__(
        self,
        conn: sqlite3.Connection,
        limits: LimitsConfig,
        hot: HotState,
        staged: StagedBlocks | None,
        seq: int,
        prev: str,
        actor: ActorLike,
        ts: str,
        check_line: Callable[[bytes], None] | None = None,
    ) -> None:
        self._conn = conn
        self._check_line = check_line
        self._limits = limits
        self._hot = hot
        self._staged = staged
        self.seq = seq
        self.prev = prev
        self.actor = actor
        self.ts = ts
        self.lines: list[bytes] = []
        self.records: list[Record] = []
        self.fts: FtsRows = []  # not inserted here: counted, indexed after the COMMIT
        # Whether the state was written to (an `apply` began, or a row was staged): a failure
        # from then on may have left rows behind even when no record was emitted (the INSERT
        # done, a later step failed), or a staged row of a command that is not answered as done.
        self.touched = False

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, every staged block row inserted first: whatever reads or writes the
        state through it (the rules' lookups, `apply`) sees the batch's appends before it."""
        if self._staged:
            try:
                self._staged.insert(self._conn)
            except BaseException:
                # Rows of commands already done may be half in: the batch is undone whole.
                self.touched = True
                raise
        return self._conn

    @property
    def limits(self) -> LimitsConfig:
        return self._limits

    @property
    def hot(self) -> HotState:
        return self._hot

    def emit(self, event: Event, data: bytes | None = None) -> Record:
        if data is None:
            # Every event within max_block_bytes, not only those whose commands check it first
            # (a block's: they pass their data): tags, a reason or a note past it would make a
            # log line no Watch or ReadLog reply of max_message_bytes can carry, for everyone.
            data = rules.check_size(self._limits, event)
        record, line = encode_record(self.seq + 1, self.ts, self.actor, event, self.prev, data)
        if self._check_line is not None:
            self._check_line(line)  # a refusal here has touched nothing: this command's alone
        self.touched = True
        # A block to a context in the cache (every append: the rules' checks put it there) is
        # staged, its position the one the rules answered (the cached count + 1, what the
        # INSERT's subquery computes), and inserted with the batch's others
        # (`Engine._run_batch_unguarded`).
        staged = self._staged
        if (
            staged is not None
            and type(event) is BlockAppended
            and (ctx := self._hot.cached(event.block.context_id)) is not None
        ):
            ctx.blocks += 1  # what `self._hot.observe(event)` does for it
            staged.stage(record.seq, event.block, ctx.blocks, self.fts)
        else:
            apply(self.conn, record, self.fts)
            self._hot.observe(event)
        self.seq = record.seq
        self.prev = record.hash
        self.lines.append(line)
        self.records.append(record)
        return record
