"""The single writer: command → checks → event → log → state → reply.

Contract (DESIGN.md's write path):

- `submit` queues a command and waits for its batch; `enqueue` queues it and returns at once a
  `Pending` whose callback the writer calls when the batch is done (the Varlink server's
  deferred replies: no future and no wake-up per command). The writer task takes every waiting
  command (up to `log.max_batch`) and runs the whole batch in ONE call on the writer's own thread
  (`SerialThread`), or, for a small batch of appends only, runs its commands on the loop and
  hands only the log's write to the thread (a batch of one with a quick disk: not even that,
  `_run_batch_on_loop`); the write connection is used under `_lock`, one batch at a time: BEGIN;
  for each command a SAVEPOINT, the rules' checks, its events encoded with the next seqs and
  applied (an append's block row staged: the batch's rows are inserted together, before
  anything else reads or writes the state and before the log's write), then RELEASE (a
  refusal: ROLLBACK TO, the named error, no trace); one log write; fsync per `log.fsync`;
  then the batch's callers are ANSWERED (the events are durable in the log, which is the
  truth). The batch's rows stay in the open transaction: the writer COMMITs
  them later, with meta(last_seq, last_hash), in a call of its own (`_commit_open`) when a read
  waits for them, when COMMIT_MAX_EVENTS wait (COMMIT_MAX_APPENDS while the transaction holds
  AppendBlock batches only), or COMMIT_DELAY_S after the first of them (a
  later batch joins the open transaction behind a `SAVEPOINT batch`, so that refusing it whole
  leaves the answered ones in place).
- The search index follows the commits: a batch's blocks are indexed later, in a transaction
  of their own on the same thread and connection (`_index_committed`: every block committed
  since the last, one statement, and `meta.fts_seq`), when a search waits for them
  (`index_caught_up`), when INDEX_MAX_BLOCKS wait, or INDEX_DELAY_S after the first of them.
  A crash in between leaves `fts_seq < last_seq`; the boot's roll forward indexes the gap.
- Invariant: SQLite never commits an event that is not already in the log.
- Read-your-writes: `acked_seq` (the newest answered event) and `committed_seq` (the newest in
  the state) are kept on the event loop; a read through `Engine.read` or `read_snapshot` called
  while `committed_seq < acked_seq` asks for the commit now and waits for it, so every read sees
  everything acknowledged before it was called. A COMMIT that fails after the answer is fatal:
  the events are durable in the log and the next boot rolls them forward.
- One way back: every undo (a refused command's savepoint, a refused or failed batch) goes
  through `_rollback`, which also empties the writer's cache (hotstate.py), so nothing undone
  is remembered. The cache is otherwise emptied only by `_forget_cache`, when the state may
  have changed behind the writer (`paused`, `replace_connection`, another process's commit).
- A full disk refuses the whole batch (`DiskFull`, the log truncated back, the transaction rolled
  back) and writes resume when space returns. A failed fsync is fatal: nothing of the batch is
  acknowledged, every later call gets `FatalStorageError`, and `on_fatal` (called once, on the
  event loop) tells the daemon to exit non-zero so that recovery replays the log.
- Cancelling a waiting `submit` does not cancel the command: once queued it runs to its end.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import anyio

from timelined import commands as cmd
from timelined.auditlog.fileops import FileOps, OsFileOps
from timelined.auditlog.scan import TailScan, scan_tail
from timelined.auditlog.writer import LogHead, LogWriter
from timelined.config import Config
from timelined.errors import (
    FatalStorageError,
    InternalError,
    LocalError,
    LogDamaged,
    ShuttingDown,
    TimelinedError,
)
from timelined.events import DAEMON, ActorLike, Record
from timelined.ids import utc_now
from timelined.state.apply import FtsRows, StagedBlocks, index_blocks, set_meta
from timelined.state.db import data_version, open_write, read_fts_seq, read_meta
from timelined.state.reads import Readers, ReadPool, ReadSnapshot
from timelined.state.replay import roll_forward
from timelined.writer import rules
from timelined.writer.batch import (
    NOTHING_COMMITTED,
    BatchToLog,
    CommandTx,
    Committed,
    EngineStats,
    Pending,
    Subscriber,
)
from timelined.writer.hotstate import HotState
from timelined.writer.serial_thread import SerialThread

log = logging.getLogger("timelined.writer.engine")

T = TypeVar("T")

# How far a rollback reaches: the command's savepoint (rolled back to and released, its staged
# rows dropped), a refused append (it wrote and staged nothing: only the cache to forget; the
# rows staged before it stay), or the whole batch (its staged rows dropped).
RollbackScope = Literal["savepoint", "statement", "batch"]

# The search index is written after the batches' COMMITs, in transactions of its own (one
# statement indexing every block committed since the last: state.apply.index_blocks), when a
# search waits for it, when this many blocks wait, or this long after the first of them was
# committed, whichever comes first; docs/performance.md has the measurements behind the values.
# Every search waits for (and asks for) the index to reach what was acknowledged before it, so
# the delay only sets how many blocks one index transaction takes when no search asks: FTS5's
# cost per transaction (a new segment, its merges) made 25 ms ~12 µs of the writer's CPU per
# append at one connection (~37 blocks a pass) against 80 ms (docs/performance.md).
INDEX_DELAY_S = 0.080
INDEX_MAX_BLOCKS = 2_000

# The state's COMMIT follows the answers: a batch's rows wait in the open transaction and are
# committed with the batches after it, in one call of their own, when a read waits for them, when
# this many events wait, or this long after the first of them. At one connection every batch is
# one append, and BEGIN, meta and COMMIT per batch were ~120 us of the writer's ~490 us per
# append (docs/performance.md); the log, fsynced before each answer, is what makes them durable.
# A read waits for (and asks for) the COMMIT of what was answered before it, so the delay only
# bounds how far the state database lags the log for an outside reader (a backup, `sqlite3` by
# hand) and how many rows one COMMIT takes at low rates: 80 ms, with the index's, halved the
# writer's CPU per append at one connection against 20 ms (docs/performance.md).
# The event bound is small once a savepoint was used in the open transaction (any command but
# AppendBlock runs behind one, and so does a batch of them joining it): SQLite copies every page
# a savepoint's statements change that an earlier batch already changed into the savepoint's
# journal; with 1,000, AppendBlocks of 100 blocks lost 13 % of their blocks/s. A transaction of
# AppendBlock batches only (joined without savepoints, `_begin_batch`) takes COMMIT_MAX_APPENDS:
# at 64 connections a COMMIT per ~1,000 appends instead of ~256 was ~8-16 µs less CPU per append
# (docs/performance.md).
COMMIT_DELAY_S = 0.080
COMMIT_MAX_EVENTS = 256
COMMIT_MAX_APPENDS = 1_024
# The state's WAL is checkpointed by the writer after a COMMIT has woken the reads waiting for
# it, once this many bytes of log lines were committed since the last checkpoint (the WAL grew
# ~5 bytes per byte of log at 64 connections: ~20 MB, about SQLite's own 4,000 pages). SQLite's
# automatic checkpoint, off on the writer's connection, ran inside the COMMIT: a read waiting
# for that COMMIT waited for the checkpoint too (docs/performance.md, "Reads while clients
# append"). A checkpoint from a connection of its own does not do: see "The write path".
CHECKPOINT_LOG_BYTES = 4 << 20
# A batch of appends of at most LOOP_MAX_BLOCKS blocks runs its commands on the event loop and
# only its log write on the writer's thread (`Engine._run_batch_on_loop`). Larger batches keep
# the thread: their blocks (~20-35 µs each) would hold the loop from reading the next calls for
# longer than the hand-off costs (at 64 connections 4 deep, ~135 a batch, the loop-side batch
# was 4 % fewer appends/s in 4 of 5 pairs; docs/performance.md), and the loop is never blocked
# for more than about half a millisecond by a batch's commands.
LOOP_MAX_BLOCKS = 16
# A batch of ONE writes the log on the loop too while the log's last write and fsync took at
# most this long: the loop is blocked for about that. This machine's fsync is ~0.2 ms at p50; a
# disk slower than 1 ms a write keeps the thread.
INLINE_MAX_WRITE_S = 0.001


_APPENDS = (cmd.AppendBlock, cmd.AppendBlocks)


def _appends_only(batch: list[Pending]) -> bool:
    """Whether every command of `batch` is an append: its only rows are its blocks'."""
    return all(type(pending.command) in _APPENDS for pending in batch)


def _small_appends(batch: list[Pending]) -> bool:
    """Whether `batch` is appends only, of at most LOOP_MAX_BLOCKS blocks in all. Every other
    command (a merge may copy many rows) keeps the whole batch on the writer's thread, where its
    SQL releases the GIL to the loop."""
    if len(batch) > LOOP_MAX_BLOCKS:
        return False
    blocks = 0
    for pending in batch:
        command = pending.command
        if type(command) is cmd.AppendBlock:
            blocks += 1
        elif type(command) is cmd.AppendBlocks:
            blocks += len(command.blocks)
        else:
            return False
    return blocks <= LOOP_MAX_BLOCKS


def _tail_problem(scan: TailScan) -> LogDamaged | None:
    """Why the engine may not open on this tail (boot recovery resolves each of these first)."""
    if scan.damage is not None:
        return scan.damage.error()
    if scan.torn is not None:
        return LogDamaged(
            scan.torn.seq, "the log has a torn tail; boot recovery cuts it", scan.torn.segment
        )
    if scan.anchor in ("mismatch", "missing"):
        return LogDamaged(scan.last_seq, f"the state's last seq is {scan.anchor} in the log")
    return None


def _due(waiting: bool, now: bool, deadline: float) -> float | None:
    """Seconds until deferred work is due (0: now; None: none waits): the COMMIT and the index
    each wait for a reader asking, a count, or a delay after their first item."""
    if not waiting:
        return None
    if now:
        return 0.0
    return max(0.0, deadline - time.monotonic())


def _command_error(command: cmd.Command, exc: Exception) -> TimelinedError:
    """What a failed command is answered with: its refusal, or an InternalError for anything else
    (a bug in one command must not stop the writer, and with it every other client)."""
    # A LocalError is no refusal a client can be sent (its name is declared nowhere): it is
    # as unexpected here as any other exception.
    if isinstance(exc, TimelinedError) and not isinstance(exc, LocalError):
        return exc
    log.exception("command %s failed unexpectedly", type(command).__name__)
    return InternalError(f"{type(exc).__name__}: {exc}")


class Engine:
    """The state's single writer, and the owner of the read pool."""

    def __init__(
        self,
        config: Config,
        conn: sqlite3.Connection,
        writer: LogWriter | None,
        readers: ReadPool,
        read_only: LogDamaged | None = None,
        stats: EngineStats | None = None,
    ) -> None:
        self.config = config
        self.limits = config.limits
        self._conn = conn
        self._writer = writer
        self.readers = readers
        self.read_only = read_only
        meta = read_meta(conn)
        # The log's head: set on the writer's thread once a batch is written (and fsynced).
        self.last_seq = meta.last_seq
        self.last_hash = meta.last_hash
        # On the event loop: the newest event answered to a client, and the newest in the state
        # (its batch committed). acked_seq >= committed_seq; they differ between a batch's answer
        # and its COMMIT, and a read called then waits for the commit (`caught_up`).
        self.acked_seq = meta.last_seq
        self.committed_seq = meta.last_seq
        self._commit_event: asyncio.Event | None = None  # made by the first read that waits
        # The search index (on the writer's thread): indexed through `_fts_seq` (meta.fts_seq,
        # committed), the state through `_state_seq`; `_unindexed` blocks committed between
        # them, the first at `_unindexed_since`. A gap left at open (a crash, or a read-only
        # boot that did not roll forward) is indexed as soon as the writer runs.
        self._fts_seq = read_fts_seq(conn)
        self._state_seq = meta.last_seq
        # On the writer's thread: events answered but not committed (the open transaction holds
        # them: open exactly when this is not 0), the first at `_uncommitted_since`, their blocks
        # (counted for the index once committed), and whether the running batch sits behind a
        # `SAVEPOINT batch` (a transaction holding answered batches was open when it began).
        self._uncommitted = 0
        self._uncommitted_blocks = 0
        self._uncommitted_since = 0.0
        self._batch_savepoint = False
        # Whether a savepoint was used in the open transaction (reset at its BEGIN): its COMMIT
        # bound is then COMMIT_MAX_EVENTS, else COMMIT_MAX_APPENDS.
        self._savepoint_used = False
        # A batch of appends joined to the open transaction without a savepoint: the seq its
        # rows come after (`_begin_batch`); None otherwise.
        self._batch_rows_after: int | None = None
        # On the event loop: a read waits for a commit (`caught_up`): commit now.
        self._commit_wanted = False
        self._unindexed = max(0, meta.last_seq - self._fts_seq)
        self._unindexed_since = time.monotonic()
        # On the event loop: every block up to `indexed_seq` is searchable; a search asks for
        # the index now (`_index_wanted`) and waits on `_index_event` (see `index_caught_up`).
        self.indexed_seq = self._fts_seq if self._unindexed else meta.last_seq
        self._index_wanted = False
        self._index_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = stats or EngineStats()
        self.fatal: FatalStorageError | None = None
        # Called once, on the event loop, when the engine goes fatal (the daemon exits 74).
        self.on_fatal: Callable[[FatalStorageError], None] | None = None
        self._fatal_reported = False
        self._queue: deque[Pending] = deque()
        # asyncio's Event, not anyio's: a set anyio Event's wait() still yields to the loop once,
        # and the writer loop waits on this after every batch at one connection.
        self._wakeup = asyncio.Event()
        # On the event loop: the writer loop waits for `_wakeup`; a call queued meanwhile is
        # run by `_kick`, or wakes it.
        self._idle = False
        self._kick_scheduled = False
        self._kick_error: Exception | None = None
        self._closing = False
        self._stopped = anyio.Event()
        self._subscribers: list[Subscriber] = []
        self._lock = asyncio.Lock()
        self._pause_depth = 0
        self._resumed = anyio.Event()
        self._resumed.set()
        self._data_version = data_version(conn)
        # The writer's cache for appends; see hotstate.py for why it stays equal to the state.
        self.hot = HotState()
        # Under `_lock` (on the writer's thread or the loop): the running batch's block rows not
        # inserted yet (`CommandTx`); empty between batches.
        # None on PostgreSQL (writer/pg.py): each append inserts its own row there.
        self._staged: StagedBlocks | None = StagedBlocks()
        # What the store cannot hold, refused before anything is written (writer/pg.py: NUL).
        self._check_line: Callable[[bytes], None] | None = None
        # Under `_lock`: log bytes answered since the WAL's last checkpoint, which runs with all
        # of them committed (`_checkpoint_wal`); an engine without a log writer (read-only,
        # PgEngine) never checkpoints.
        self._wal_log_bytes = 0
        if writer is not None:
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        # The write connection is used only under `_lock`, which `paused()` also holds so that
        # a repair can swap the state between two batches: on this thread, or by the writer
        # loop on the event loop (a batch of appends, `_run_batch_on_loop`).
        # Started last: nothing above can fail and leave it running.
        self._thread = SerialThread("timelined-writer")
        # The log's last write (and fsync) took this long: a slow disk keeps a batch of one's
        # write on the thread (`_run_batch_on_loop`).
        self._last_write_s = 0.0

    # --- lifecycle -----------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        config: Config,
        *,
        fileops: FileOps | None = None,
        read_only: LogDamaged | None = None,
        head: LogHead | None = None,
    ) -> AsyncIterator[Engine]:
        """Open the state and run the writer until exit.

        `head` is where boot recovery found the log to end (the state already rolled forward to
        it); without it the engine scans the tail itself and rolls the state forward, refusing a
        tail that needs recovery (torn, damaged, or disagreeing with the state).
        """
        engine = await anyio.to_thread.run_sync(
            lambda: cls._open_sync(config, fileops or OsFileOps(), read_only, head)
        )
        try:
            await engine.readers.open()
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine._writer_loop)
                try:
                    yield engine
                finally:
                    await engine.drain()
        finally:
            await engine._close()

    @classmethod
    def _open_sync(
        cls,
        config: Config,
        fileops: FileOps,
        read_only: LogDamaged | None,
        head: LogHead | None,
    ) -> Engine:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        conn = open_write(config.state_db)
        writer: LogWriter | None = None
        stats = EngineStats()
        if read_only is None and head is None:
            meta = read_meta(conn)
            scan = scan_tail(config.log_dir, meta.last_seq, meta.last_hash, fileops)
            problem = _tail_problem(scan)
            if problem is not None:
                conn.close()
                raise problem
            rolled = roll_forward(conn, config.log_dir)
            if rolled.applied:
                log.info(
                    "rolled the state forward by %d events to seq %d",
                    rolled.applied,
                    rolled.last_seq,
                )
            head = scan.head
        if read_only is None:
            assert head is not None
            writer = LogWriter(
                config.log_dir,
                head,
                fileops=fileops,
                segment_bytes=config.log.segment_bytes,
                fsync=config.log.fsync,
                fsync_interval_ms=config.log.fsync_interval_ms,
                on_fsync=stats.fsync_seconds.observe,
                reserve_bytes=config.log.reserve_bytes,
            )
        return cls(config, conn, writer, Readers(config.state_db), read_only, stats)

    async def drain(self) -> None:
        """Refuse new commands, finish every queued one, then stop the writer task."""
        self._closing = True
        self._wakeup.set()
        await self._stopped.wait()

    async def _close(self) -> None:
        # Shielded: a cancelled shutdown must still sync the log (interval mode acknowledges
        # before its fsync) and close the state cleanly.
        with anyio.CancelScope(shield=True):
            try:
                try:
                    await self.readers.close()
                finally:
                    await self._on_writer_thread(self._close_storage)
            finally:
                self._thread.close()

    # --- the storage hooks: what a backend (writer/pg.py) does its own way --------------------

    @property
    def storage_name(self) -> str:
        """What a storage error names: the state file here, a redacted dsn on PostgreSQL."""
        return str(self.config.state_db)

    def _close_storage(self) -> None:
        """On the writer's thread, at the end: sync the log, checkpoint the WAL, close."""
        if self.fatal is None and self._writer is not None:
            self._writer.close()  # syncs: nothing acknowledged in interval mode is left
            self._commit_open()  # normally done by the writer loop's drain already
            if self.fatal is None:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()

    def _open_snapshot(self) -> ReadSnapshot:
        """A long read's snapshot (blocking: called on a worker thread)."""
        return ReadSnapshot(self.config.state_db)

    def _begin_batch(self, batch: list[Pending]) -> tuple[int, str]:
        """Under the lock: open the batch's transaction, or join the open one (holding answered
        batches) behind a savepoint; the head it continues.

        A batch of appends only joins it without a savepoint: everything such a batch writes is
        its blocks' rows, all with seqs past the head, and `_rollback` undoes it by deleting
        them. At one connection every batch is one append joining the open transaction, and
        SAVEPOINT and RELEASE were two of its three statements.
        """
        if not self._uncommitted:
            self._conn.execute("BEGIN IMMEDIATE")
            self._savepoint_used = False
        elif _appends_only(batch):
            self._batch_rows_after = self.last_seq
        else:
            self._conn.execute("SAVEPOINT batch")
            self._batch_savepoint = self._savepoint_used = True
        return self.last_seq, self.last_hash

    def _end_empty_batch(self) -> None:
        """Under the lock: a batch that logged nothing (refusals, idempotent retries)."""
        if self._batch_savepoint:
            self._batch_savepoint = False
            self._conn.execute("RELEASE batch")
        elif self._batch_rows_after is not None:
            self._batch_rows_after = None  # it wrote no row: nothing to release
        else:
            self._conn.execute("COMMIT")

    def follow(self) -> None:
        """The subscribers are in: start giving them other writers' commits (there are none
        here: this engine is the state's only writer)."""

    async def _on_writer_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the writer's thread, between batches and outside `paused()`
        (the lock is not re-entrant: a `paused()` holder must not call this)."""
        async with self._lock:
            try:
                return await self._thread.run(fn, *args)
            finally:
                self._report_fatal()

    async def _in_writer_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """`_on_writer_thread` for the writer loop, which no cancellation reaches (it runs in a
        shielded scope for its whole life): no cancel scope per call."""
        async with self._lock:
            try:
                return await self._thread.submit(fn, *args)
            finally:
                self._report_fatal()

    def _sync_due(self) -> bool:
        """Interval mode: whether the log has unsynced lines past the interval (checked here,
        so that the loop hands the fsync to the thread only when there is one to do)."""
        return self._writer is not None and self._writer.sync_due()

    def _report_fatal(self) -> None:
        """Tell `on_fatal` once, here on the event loop: the writer's thread only records it."""
        if self.fatal is not None and not self._fatal_reported and self.on_fatal is not None:
            self._fatal_reported = True
            self.on_fatal(self.fatal)

    # --- writing -------------------------------------------------------------------------------

    async def submit(self, command: cmd.Command, actor: ActorLike = DAEMON) -> rules.Result:
        """Run one command through the writer; returns its result or raises its named error."""
        pending = self.enqueue(command, actor)
        if not pending.answered:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def wake() -> None:
                if not done.done():  # the waiter may have been cancelled
                    done.set_result(None)

            pending.add_done_callback(wake)
            await done
        return pending.outcome()

    def enqueue(self, command: cmd.Command, actor: ActorLike = DAEMON) -> Pending:
        """Queue one command for the writer without waiting: its `Pending` is answered (its
        callback called, on the event loop) when the batch it ran in is done. A command the
        engine refuses outright (fatal, read-only, stopping) raises here."""
        if self.fatal is not None:
            raise self.fatal
        if self.read_only is not None:
            raise self.read_only
        if self._closing:
            raise ShuttingDown()
        pending = Pending(command, actor)
        self._queue.append(pending)
        if not self._idle or self._writer is None:
            # The writer loop is running (it takes the queue when it is back), or the engine
            # has no log writer to write a batch inline (PostgreSQL: see `_kick`).
            self._wakeup.set()
        elif not self._kick_scheduled:
            # After the callbacks of this loop round (the other connections' calls join it).
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._kick)
        else:
            # A second call this round: a batch for the writer loop, woken now so that it runs
            # in the same round as `_kick` (which leaves it the queue), not one round later.
            self._wakeup.set()
        return pending

    def degrade(self, damage: LogDamaged) -> None:
        """Refuse every write from now on (the verifier found the log damaged before its tail);
        reads go on. Commands already queued still run: they were accepted before the damage
        was known. Kept until the daemon stops; the first reason stays."""
        if self.read_only is None:
            self.read_only = damage

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(records, lines)` with every answered batch (on the event loop): its
        records and their log lines exactly as written (newline included), so that no
        subscriber encodes a line again."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[sqlite3.Connection]:
        """Hold the writer between batches (a repair swaps the state file meanwhile)."""
        self._pause_depth += 1
        self._resumed = anyio.Event()
        try:
            async with self._lock:
                # The holder gets a connection with nothing pending: the answered rows first.
                await self._thread.run(self._commit_open)
                self._publish_state()
                # The holder may change the state behind the writer.
                self._forget_cache("paused")
                try:
                    yield self._conn
                finally:
                    self._forget_cache("resumed")
                    self._reload_index_position()
        finally:
            self._pause_depth -= 1
            if self._pause_depth == 0:
                self._resumed.set()

    def replace_connection(self, conn: sqlite3.Connection) -> None:
        """Swap in a rebuilt state database (only inside `paused()`)."""
        assert not self._uncommitted, "paused() commits before handing the connection out"
        if self._writer is not None:
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the writer's, after its COMMITs
        self._conn = conn
        self._forget_cache("connection replaced")
        meta = read_meta(conn)
        assert (meta.last_seq, meta.last_hash) == (self.last_seq, self.last_hash)
        self._data_version = data_version(conn)
        self._reload_index_position()

    def _reload_index_position(self) -> None:
        """Read how far the search index is from the state itself: it may have been rebuilt or
        written behind the writer (between batches, with the writer's thread idle)."""
        self._fts_seq = read_fts_seq(self._conn)
        self._state_seq = read_meta(self._conn).last_seq
        self._unindexed = max(0, self._state_seq - self._fts_seq)
        self._unindexed_since = time.monotonic()

    async def data_version_changed(self) -> bool:
        """Whether another connection committed to the state database since the last call.

        `PRAGMA data_version` on the write connection moves only when another connection (a
        process writing the file behind the daemon's back) commits; the verifier polls this.
        Runs on the writer's thread, between batches.
        """

        def check() -> bool:
            version = data_version(self._conn)
            changed = version != self._data_version
            self._data_version = version
            if changed:
                self._forget_cache("another process wrote the state")
                self._reload_index_position()
            return changed

        return await self._on_writer_thread(check)

    async def _writer_loop(self) -> None:
        """Take batches until drained (or fatal). Shielded for its whole life: once queued, a
        command runs to its end whoever is cancelled, and the loop ends only through `drain`
        (which `Engine.open` always calls) or a fatal error."""
        with anyio.CancelScope(shield=True):
            await self._writer_loop_shielded()

    async def _writer_loop_shielded(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        interval = (
            self.config.log.fsync_interval_ms / 1000
            if self.config.log.fsync == "interval"
            else None
        )
        try:
            while True:
                if self.fatal is not None:
                    self._fail_queued(self.fatal)
                    self._wake_readers()  # a read waiting for a commit that never comes fails
                    return
                # Due work before the next batch: a COMMIT a read waits for, or that
                # COMMIT_MAX_EVENTS bounds, is not put off behind calls queued meanwhile (a
                # batch run by `_kick` wakes the loop for it a loop round later).
                commit_due = self._commit_due()
                if commit_due == 0 or (self._closing and commit_due is not None):
                    await self._commit_now()
                    continue
                index_due = self._index_due()
                if index_due == 0 or (self._closing and index_due is not None):
                    await self._index_now()
                    continue
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    timeout = min(
                        (t for t in (interval, commit_due, index_due) if t is not None),
                        default=None,
                    )
                    # A timer that sets the event, not `move_on_after`: at one connection the
                    # loop waits here after every append (the COMMIT's or the index's delay),
                    # and a cancel scope per wait was ~5 % of the loop's CPU (performance.md).
                    timer = None if timeout is None else loop.call_later(timeout, self._wakeup.set)
                    self._idle = True
                    try:
                        await self._wakeup.wait()
                    finally:
                        self._idle = False
                        if timer is not None:
                            timer.cancel()
                    if interval is not None and self._sync_due():
                        await self._in_writer_loop(self._sync_if_due)
                    if self._kick_error is not None:
                        raise self._kick_error
                    continue
                if self._pause_depth:
                    await self._resumed.wait()
                batch = [
                    self._queue.popleft()
                    for _ in range(min(len(self._queue), self.config.log.max_batch))
                ]
                # The loop's path splits the log file's write off a batch: an engine without a
                # log writer (PostgreSQL: every statement a round trip) keeps the thread.
                if self._writer is not None and _small_appends(batch):
                    committed = await self._run_batch_on_loop(batch)
                else:
                    committed = await self._in_writer_loop(self._run_batch, batch)
                self._batch_done(batch, committed)
                # Not kept while the loop waits for the next call: the batch's results (each
                # block's content) and its log lines, up to max_batch large ones.
                del batch, committed
        finally:
            self._wake_readers()
            self._stopped.set()

    def _batch_done(self, batch: list[Pending], committed: Committed) -> None:
        """On the event loop, a batch run: answer it, tell the subscribers. A fatal error is the
        writer loop's to act on, at its top (it fails the queue and ends)."""
        if committed.records:
            self.acked_seq = max(self.acked_seq, committed.records[-1].seq)
        for pending in batch:
            pending.answer()  # here on SQLite; PgEngine's were answered after its COMMIT
        if committed.records:
            self._publish_state()
            # The events are in the log: the subscribers (Watch, the Merkle tree) read
            # the log, and get them now, whether or not the state has committed them.
            for callback in list(self._subscribers):
                try:
                    callback(committed.records, committed.lines)
                except Exception:
                    log.exception("a commit subscriber failed; it was skipped")
        if self.fatal is None:
            self._publish_indexed()

    def _kick(self) -> None:
        """On the event loop, the round after a call was queued to an idle writer loop: run a
        lone append here, written and fsynced inline, or wake the writer loop."""
        self._kick_scheduled = False
        queue = self._queue
        if not (
            len(queue) == 1
            and self._idle
            and not self._lock.locked()
            and not self._pause_depth
            and not self._closing
            and self.fatal is None
            and self._writer is not None
            and self._inline_write_ok()
            and _small_appends([queue[0]])
        ):
            self._wakeup.set()
            return
        batch = [queue.popleft()]
        first_uncommitted = not self._uncommitted
        try:
            committed = self._run_inline(batch)
            self._report_fatal()
            self._batch_done(batch, committed)
        except Exception as exc:
            self._kick_error = exc  # the writer loop raises it, as its own batch's would
            self._wakeup.set()
            return
        if (
            self.fatal is not None
            or (first_uncommitted and self._uncommitted)
            or self._commit_due() == 0
        ):
            # Fatal: the writer loop ends. A COMMIT's deadline new (or now): the loop's timer,
            # armed before this batch, knows nothing of it. The index's comes only with a COMMIT.
            self._wakeup.set()

    # --- the state's COMMIT, after the answers ------------------------------------------------

    def _commit_due(self) -> float | None:
        """Seconds until the answered rows should be committed (0: now); None: none wait."""
        return _due(
            self._uncommitted > 0 and self.fatal is None,
            self._commit_wanted
            or self._index_wanted
            or self._uncommitted
            >= (COMMIT_MAX_EVENTS if self._savepoint_used else COMMIT_MAX_APPENDS),
            self._uncommitted_since + COMMIT_DELAY_S,
        )

    async def _commit_now(self) -> None:
        self._commit_wanted = False  # a read asking from here on asks for the next one
        await self._in_writer_loop(self._commit_open)
        self._publish_state()
        # A COMMIT of events without blocks (a new conversation, a sidebar, tags) moves search
        # as far as the state when no block waits for the index: a search asking after them
        # waited its whole SEARCH_INDEX_WAIT_S (1 s) for an index pass that had nothing to do.
        self._publish_indexed()
        if self.fatal is not None:
            self._wake_readers()
        await self._checkpoint_if_due()

    async def _checkpoint_if_due(self) -> None:
        """After a COMMIT was published (the reads waiting for it are woken and run on their
        own connections meanwhile): checkpoint the WAL on the writer's thread when due."""
        if self._writer is not None and self._wal_log_bytes >= CHECKPOINT_LOG_BYTES:
            await self._in_writer_loop(self._checkpoint_wal)

    def _checkpoint_wal(self) -> None:
        """On the writer's thread, with no transaction open: SQLite's PASSIVE checkpoint, the one
        its automatic checkpoint ran inside the COMMIT. Run here, between two transactions, so
        that the writer's next one restarts the WAL once it is all copied. A failure is no
        state error (the WAL only grows until the next one): logged, tried again later."""
        if self._uncommitted or self.fatal is not None:
            return  # the next COMMIT's turn
        self._wal_log_bytes = 0
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("the state database's WAL checkpoint failed (tried again later): %s", exc)
            return
        self.stats.wal_checkpoints += 1

    def _commit_open(self) -> None:
        """On the writer's thread, between batches: commit the open transaction (every answered
        batch since the last commit) with meta. A failure is fatal: the events are in the log,
        answered, and the next boot rolls them forward."""
        if not self._uncommitted or self.fatal is not None:
            return
        conn = self._conn
        try:
            set_meta(conn, self.last_seq, self.last_hash)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._fail_after_answer(
                FatalStorageError(self.storage_name, 0, f"state commit failed: {exc}")
            )
            return
        self.stats.state_commits += 1
        self._state_seq = self.last_seq
        if self._uncommitted_blocks:
            if not self._unindexed:
                self._unindexed_since = time.monotonic()
            self._unindexed += self._uncommitted_blocks
        self._uncommitted = self._uncommitted_blocks = 0

    def _publish_state(self) -> None:
        """On the event loop, after a call on the writer's thread: how far the state is."""
        if self._state_seq > self.committed_seq:
            self._committed(self._state_seq)

    # --- the search index, after the commits ---------------------------------------------------

    def _index_due(self) -> float | None:
        """Seconds until the search index should be written (0: now); None: nothing to index."""
        return _due(
            self._unindexed > 0 and self.fatal is None,
            self._index_wanted or self._unindexed >= INDEX_MAX_BLOCKS,
            self._unindexed_since + INDEX_DELAY_S,
        )

    async def _index_now(self) -> None:
        self._index_wanted = False  # a search asking from here on asks for the next one
        await self._in_writer_loop(self._index_committed)
        self._publish_state()
        self._publish_indexed()
        if self.fatal is not None:
            self._wake_readers()
        await self._checkpoint_if_due()

    def _index_committed(self) -> None:
        """On the writer's thread, between batches: index every block committed since the last
        time, and record it (meta.fts_seq), in one transaction of its own. A failure is fatal
        like any other state error outside a command's checks; the boot indexes the gap."""
        self._commit_open()  # BEGIN below needs no open transaction; the index what it commits
        if self._unindexed == 0 or self.fatal is not None:
            return
        conn, upto = self._conn, self._state_seq
        try:
            conn.execute("BEGIN IMMEDIATE")
            index_blocks(conn, self._fts_seq, upto)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the connection is abandoned; the first cause is the one reported
            self._go_fatal(FatalStorageError(self.storage_name, 0, f"search index: {exc}"))
            return
        self._fts_seq = upto
        self._unindexed = 0

    def _publish_indexed(self) -> None:
        """On the event loop, after a call on the writer's thread: how far search sees."""
        seq = self._state_seq if self._unindexed == 0 else self._fts_seq
        if seq > self.indexed_seq:
            self.indexed_seq = seq
            event, self._index_event = self._index_event, None
            if event is not None:
                event.set()

    async def index_caught_up(self, within: float) -> int:
        """Wait, at most `within` seconds, until every block acknowledged before this call is
        searchable (read-your-writes for search); returns how far the index is then."""
        target = self.acked_seq
        if self.indexed_seq < target and self.fatal is None:
            self._index_wanted = True
            self._wakeup.set()
            with anyio.move_on_after(within):
                while self.indexed_seq < target and self.fatal is None:
                    if self._index_event is None:
                        self._index_event = asyncio.Event()
                    await self._index_event.wait()
        return self.indexed_seq

    def _committed(self, seq: int) -> None:
        """On the event loop: the state holds everything up to `seq`."""
        self.committed_seq = seq
        self._wake_readers()

    def _wake_readers(self) -> None:
        """Wake every read waiting for a commit or for the index (they check again)."""
        for event in (self._commit_event, self._index_event):
            if event is not None:
                event.set()
        self._commit_event = self._index_event = None

    async def caught_up(self) -> None:
        """Wait until the state holds everything acknowledged before this call (read-your-
        writes); raises the fatal error if the writer stopped before committing it."""
        target = self.acked_seq
        while self.committed_seq < target:
            if self.fatal is not None:
                raise self.fatal
            self._commit_wanted = True
            self._wakeup.set()
            if self._commit_event is None:
                self._commit_event = asyncio.Event()
            await self._commit_event.wait()

    async def delivered(self) -> None:
        """Wait until the commit subscribers (the Merkle tree, the watch hub) were given every
        event acknowledged before this call: the tree's read-your-writes. Here they are given
        each batch as it is answered (waiting for the commit covers that); PgEngine's also get
        other daemons' events, later."""
        await self.caught_up()

    @property
    def readable_seq(self) -> int:
        """The newest event a read of the log (ReadLog) may return."""
        return self.last_seq

    def _fail_queued(self, error: TimelinedError) -> None:
        while self._queue:
            pending = self._queue.popleft()
            pending.error = error
            pending.answer()

    def _sync_if_due(self) -> None:
        try:
            if self._writer is not None:
                self._writer.sync_if_due()
        except FatalStorageError as exc:
            self._go_fatal(exc)

    def _go_fatal(self, exc: FatalStorageError) -> None:
        """On the writer's thread: record the fatal error (`_report_fatal` tells the daemon)."""
        if self.fatal is None:
            self.fatal = exc
            log.critical("%s", exc.message)

    async def _run_batch_on_loop(self, batch: list[Pending]) -> Committed:
        """A small batch of appends: its commands on the event loop, its log write on the
        writer's thread, or on the loop too for a batch of one while the disk is quick.

        Why: the event loop and the writer's thread share one GIL, and a small batch is
        cheaper than handing it over. With its commands on the thread, each GIL release of
        theirs (each SQLite statement) handed the GIL to the loop and taking it back cost both
        threads CPU; the log's write and fsync hold no GIL, so they are what the thread still
        overlaps with the loop. At one connection every batch is one append, and the hand-off
        to the thread and back (two cross-thread wake-ups) cost more than the batch: there the
        loop writes and fsyncs itself, blocked for about INLINE_MAX_WRITE_S at most
        (docs/performance.md has the figures).

        The lock is held throughout, so nothing else uses the write connection (the thread
        runs only the write, which does not touch it) and no `paused()` holder or COMMIT comes
        between the batch's rows and its log write.
        """
        async with self._lock:
            try:
                if len(batch) == 1 and self._inline_write_ok():
                    return self._run_inline(batch)
                run = self._guarded(batch, self._run_batch_unguarded, batch)
                if not isinstance(run, BatchToLog):
                    return run
                outcome = await self._thread.submit(self._timed_write, run)
                return self._guarded(batch, self._after_write, run, outcome)
            finally:
                self._report_fatal()

    def _inline_write_ok(self) -> bool:
        """Whether the loop may write and fsync a batch itself: the log's last write was quick."""
        return self._last_write_s <= INLINE_MAX_WRITE_S

    def _run_inline(self, batch: list[Pending]) -> Committed:
        """A batch of one append, wholly on the event loop (the caller holds the lock, or runs
        with it free and no await): its command, the log's write and fsync, its rows kept."""
        run = self._guarded(batch, self._run_batch_unguarded, batch)
        if not isinstance(run, BatchToLog):
            return run
        self.stats.inline_writes += 1
        return self._guarded(batch, self._after_write, run, self._timed_write(run))

    def _run_batch(self, batch: list[Pending]) -> Committed:
        """The whole batch, on the writer's thread. Returns the committed records."""
        run = self._guarded(batch, self._run_batch_unguarded, batch)
        if isinstance(run, BatchToLog):
            return self._guarded(batch, self._write_batch, run)
        return run

    def _guarded(self, batch: list[Pending], fn: Callable[..., T], *args: Any) -> T | Committed:
        """`fn(*args)`, a step of running `batch`; a state database error undoes the batch.

        A state database error outside a command's own checks (BEGIN refused because another
        process holds the write lock, a failing SAVEPOINT or COMMIT) leaves the write connection
        in an unknown state: it is fatal like a failed fsync. Nothing of the batch is answered
        as done; what the log already holds, the next boot rolls forward.
        """
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            fatal = FatalStorageError(self.storage_name, 0, f"state database: {exc}")
            return self._abandon(batch, fatal)

    def _run_batch_unguarded(self, batch: list[Pending]) -> Committed | BatchToLog:
        """The batch's commands: what their log write needs, or the batch done without one
        (nothing to log, or undone)."""
        conn = self._conn
        seq, prev = self._begin_batch(batch)
        lines: list[bytes] = []
        records: list[Record] = []
        fts: FtsRows = []
        accepted: list[Pending] = []
        hot, limits, staged = self.hot, self.limits, self._staged
        ts = utc_now()  # one timestamp for the whole batch: its records are written together
        for pending in batch:
            command = pending.command
            tx = CommandTx(
                conn, limits, hot, staged, seq, prev, pending.actor, ts, self._check_line
            )
            # An AppendBlock needs no savepoint: `rules._append_block` raises every refusal
            # before it emits, and its one `emit` stages exactly one block row (inserted with
            # the batch's others, below; the full-text row waits for `_index_committed`). So a
            # refused or failing append has nothing to undo but its staged row. The one case
            # that would need undoing (a failure after the emit, or an SQL error, which may
            # have undone more than a statement) undoes the whole batch below. An AppendBlocks
            # emits many blocks, all or none: it keeps its savepoint, as every other command,
            # and its rows are inserted inside it.
            guarded = type(command) is not cmd.AppendBlock
            if guarded:
                if staged:  # the appends before it: outside its savepoint
                    undone = self._insert_staged(staged, batch)
                    if undone is not None:
                        return undone
                conn.execute("SAVEPOINT command")
                self._savepoint_used = True
            try:
                pending.result = rules.execute(tx, command, ts)
                if guarded and staged:
                    staged.insert(conn)
            except Exception as exc:
                error = _command_error(command, exc)
                if not guarded and (tx.touched or isinstance(exc, sqlite3.Error)):
                    return self._undo_batch(batch, error)
                self._rollback("savepoint" if guarded else "statement")
                pending.error = error
                self.stats.refused += 1
                continue
            if guarded:
                conn.execute("RELEASE command")
            seq, prev = tx.seq, tx.prev
            lines.extend(tx.lines)
            records.extend(tx.records)
            fts.extend(tx.fts)
            accepted.append(pending)
        if staged:
            undone = self._insert_staged(staged, batch)
            if undone is not None:
                return undone
        self.stats.commands += len(batch)
        if not lines:
            self._end_empty_batch()  # only idempotent retries and refusals: nothing to log
            return NOTHING_COMMITTED
        return BatchToLog(batch, accepted, records, lines, fts)

    def _insert_staged(self, staged: StagedBlocks, batch: list[Pending]) -> Committed | None:
        """Insert the block rows the batch's appends staged; None, or (they failed) the batch
        undone, as a failing INSERT of one append undid it (`_undo_batch`), with its error."""
        try:
            staged.insert(self._conn)
        except Exception as exc:
            log.exception("the batch's block rows failed to insert")
            return self._undo_batch(batch, InternalError(f"{type(exc).__name__}: {exc}"))
        return None

    def _write_batch(self, run: BatchToLog) -> Committed:
        """The batch's commands have run: log it; it is answered when the call returns, its
        rows committed later (`_commit_open`)."""
        return self._after_write(run, self._timed_write(run))

    def _timed_write(self, run: BatchToLog) -> float | TimelinedError:
        """The batch's log write (and fsync): the seconds it took, or why it failed. Touches
        no state: the one step of a batch of appends on the writer's thread."""
        records = run.records
        assert self._writer is not None, "read-only engines refuse commands in submit()"
        try:
            started = time.perf_counter()
            self._writer.write_batch(
                b"".join(run.lines), records[0].seq, records[-1].seq, records[-1].hash
            )
        except LocalError:  # never a write's refusal: it goes where any other exception goes
            raise
        except TimelinedError as exc:  # StorageError, DiskFull, FatalStorageError
            return exc
        self._last_write_s = elapsed = time.perf_counter() - started
        return elapsed

    def _after_write(self, run: BatchToLog, outcome: float | TimelinedError) -> Committed:
        """The log's answer to the batch's write: refuse the batch, or keep its rows."""
        batch, accepted, records, lines, fts = run
        conn = self._conn
        seq, prev = records[-1].seq, records[-1].hash
        if isinstance(outcome, FatalStorageError):
            return self._abandon(batch, outcome)
        if isinstance(outcome, TimelinedError):
            self.stats.disk_full += 1
            log.error("a batch of %d commands was refused: %s", len(accepted), outcome.message)
            return self._abandon(batch, outcome)
        fsync_s = outcome
        # The log holds the batch: it is answered when this call returns. Its rows join the
        # open transaction, committed later by `_commit_open` (the index later still, in its own
        # transaction: FTS5's insert was ~30 µs of an append's critical path). From here every
        # failure is fatal, never an answer.
        self.last_seq, self.last_hash = seq, prev
        self.stats.events += len(records)
        self.stats.observe(len(batch), fsync_s)
        self._batch_rows_after = None
        if self._batch_savepoint:
            self._batch_savepoint = False
            try:
                conn.execute("RELEASE batch")
            except sqlite3.Error as exc:
                self._fail_after_answer(
                    FatalStorageError(self.storage_name, 0, f"state savepoint failed: {exc}")
                )
                return Committed(records, lines)
        if not self._uncommitted:
            self._uncommitted_since = time.monotonic()
        self._uncommitted += len(records)
        self._uncommitted_blocks += len(fts)
        self._wal_log_bytes += sum(map(len, lines))
        return Committed(records, lines)

    def _fail_after_answer(self, fatal: FatalStorageError) -> None:
        """The state refused a batch already answered: roll back what is left and go fatal,
        leaving the answers as they are."""
        try:
            self._rollback("batch")
        except sqlite3.Error:
            pass  # the connection is abandoned; the first cause is the one reported
        self._go_fatal(fatal)

    def _undo_batch(self, batch: list[Pending], error: TimelinedError) -> Committed:
        """Undo the whole batch for a command without a savepoint that failed after changing the
        state (never expected: see `_run_batch_unguarded`): each of its commands is answered
        with `error` and counted as refused; nothing is logged or committed; the writer goes on.
        """
        unanswered = sum(1 for pending in batch if pending.error is None)
        self._abandon(batch, error)
        log.error("a batch of %d commands was undone: %s", len(batch), error.message)
        self.stats.refused += unanswered
        self.stats.commands += len(batch)
        return NOTHING_COMMITTED

    def _abandon(self, batch: list[Pending], error: TimelinedError) -> Committed:
        """Roll the whole batch back and answer every command not answered yet with `error` (a
        refused one keeps its own error). Returns the committed records: none.

        A `FatalStorageError` stops the writer, and then a failing ROLLBACK changes nothing (the
        connection is abandoned; the first cause is the one reported). Otherwise a failing
        ROLLBACK raises, and `_run_batch` makes it fatal.
        """
        fatal = error if isinstance(error, FatalStorageError) else None
        try:
            self._rollback("batch")
        except sqlite3.Error:
            if fatal is None:
                raise
        for pending in batch:
            if pending.error is None:
                pending.result = None
                pending.error = error
        if fatal is not None:
            self._go_fatal(fatal)
        return NOTHING_COMMITTED

    def _rollback(self, scope: RollbackScope) -> None:
        """The one way back: undo `scope` in SQL and forget everything the cache learned.

        The cache describes the state inside the open transaction (hotstate.py), so whatever is
        undone must leave it too; clearing it whole is simpler than knowing what was learned, and
        is rare next to appends. It is cleared first: a ROLLBACK that fails leaves it empty.
        An SQL error may already have ended the transaction: then the batch has nothing to undo.
        """
        self._forget_cache("rolled back")
        if scope != "statement" and self._staged is not None:
            self._staged.clear()  # a refused append staged nothing; the rows before it stay
        conn = self._conn
        if scope == "savepoint":
            conn.execute("ROLLBACK TO command")
            conn.execute("RELEASE command")
        elif scope == "batch" and (self._batch_savepoint or self._batch_rows_after is not None):
            # Joined to the open transaction: the answered batches before this one stay in it.
            savepoint, after = self._batch_savepoint, self._batch_rows_after
            self._batch_savepoint, self._batch_rows_after = False, None
            if not conn.in_transaction:
                # SQLite ended the whole transaction on an error (a full or failing disk):
                # answered events went with it, and only a boot's roll forward brings them back.
                raise sqlite3.OperationalError(
                    f"the transaction holding {self._uncommitted} answered events was rolled "
                    "back by SQLite"
                )
            if savepoint:
                conn.execute("ROLLBACK TO batch")
                conn.execute("RELEASE batch")
            else:
                # A batch of appends, joined without a savepoint (`_begin_batch`): its rows are
                # the blocks past the head it began at, and nothing else.
                conn.execute("DELETE FROM blocks WHERE seq > ?", (after,))
        elif scope == "batch" and conn.in_transaction:
            conn.execute("ROLLBACK")

    def _forget_cache(self, reason: str) -> None:
        """Empty the writer's cache: the state may no longer be what it learned (`reason`)."""
        if self.hot:
            log.debug("the writer's cache is forgotten: %s", reason)
        self.hot.clear()

    @property
    def writer(self) -> LogWriter | None:
        return self._writer

    # --- reading -------------------------------------------------------------------------------

    async def read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a query function from state.queries on a read-only connection, seeing everything
        acknowledged before the call."""
        if self.committed_seq < self.acked_seq:
            await self.caught_up()
        return await self.readers.run(fn, *args, **kwargs)

    async def read_snapshot(self) -> ReadSnapshot:
        """A long read's own snapshot (an export), seeing everything acknowledged before the
        call; the caller closes it."""
        await self.caught_up()
        return await anyio.to_thread.run_sync(self._open_snapshot)
