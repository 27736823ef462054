"""The writer on PostgreSQL: the same engine, its batches committed to a database shared by
several daemons (`[store] backend = "postgresql"`; docs/architecture.md, "The write path on
PostgreSQL").

What differs from the SQLite engine (writer/engine.py), through its storage hooks:

- One transaction per batch, log and state together: BEGIN; the head row (`meta`, id = 1)
  locked FOR UPDATE, which serialises the batches of every daemon on the database into one
  chain; the rules, exactly as on SQLite (savepoints included); the batch's log rows; the new
  head; `NOTIFY timelined_log`; COMMIT. The callers are answered only AFTER the commit: there
  is no log file that is the truth before the state, and nothing to roll forward at boot.
- Another daemon may have written since this one's last batch: the locked head then is not
  the engine's own. The writer's cache (hotstate.py) may describe a context another daemon
  appended to, so it is forgotten, and the batch continues the chain from the locked head.
- Commit subscribers (the watch hub, the Merkle tree) get EVERY event of the database in seq
  order, other daemons' too: `_deliver` passes on only what continues `delivered_seq`. A batch
  of this daemon that follows events it has not delivered yet (another daemon wrote between)
  wakes the follower, which reads what is missing from the log table first. The follower also
  keeps an idle daemon's subscribers current: it LISTENs on `timelined_log` (other daemons'
  notifications wake it) and polls slowly in case a notification is lost with its connection.
- The search index is PostgreSQL's own (a generated tsvector column), written in the blocks'
  transaction: there is no deferred index step, and `meta.fts_seq` follows `last_seq`.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import psycopg

from timelined import conninfo
from timelined.auditlog.fileops import FileOps
from timelined.auditlog.record import RecordError, decode_line
from timelined.auditlog.writer import LogHead
from timelined.config import Config, read_password
from timelined.errors import FatalStorageError, LogDamaged, StorageError
from timelined.events import Record
from timelined.pgstore.logtable import insert_lines, read_lines
from timelined.pgstore.reads import PgReaders, PgReadSnapshot
from timelined.pgstore.schema import PgSchemaError, ensure_schema
from timelined.pgstore.sql import PgConnection, PgOperationalError, connect, refuse_nul
from timelined.state.apply import set_meta
from timelined.state.dbapi import DbConn
from timelined.state.reads import ReadSnapshot
from timelined.writer.batch import BatchToLog, Committed, EngineStats, Pending, Subscriber
from timelined.writer.engine import Engine

log = logging.getLogger("timelined.writer.pg")

CHANNEL = "timelined_log"
# The follower reads other daemons' events in pages this big (rows, bytes) ...
FOLLOW_ROWS = 1000
FOLLOW_BYTES = 8 * 1024 * 1024
# ... when a notification wakes it, and at least this often (a notification lost with the
# LISTEN connection is late by at most this much).
FOLLOW_POLL_S = 2.0
# A lost LISTEN connection is opened again after this long (polling goes on meanwhile).
RELISTEN_S = 5.0
# A tree read waits at most this long for the follower's round (`delivered`): a database that
# does not answer leaves the tree where it is, and the read answers from it.
DELIVERY_WAIT_S = 5.0
# A batch's transaction never waits on its client, so one idle this long belongs to a daemon
# whose host vanished (a killed process's connection closes at once; a lost host's lingers
# until TCP gives up): the server ends it, and with it its lock on the head row, which every
# other daemon's batches wait for.
IDLE_IN_TRANSACTION_S = 30


def read_committed(conn: DbConn, after_seq: int, max_rows: int, max_bytes: int) -> Committed:
    """The log table's events after `after_seq` (a bounded page), decoded, as a `Committed`.

    Contiguous: batches commit one at a time under the head row's lock, so a snapshot that
    sees a seq sees every seq before it."""
    assert isinstance(conn, PgConnection)
    rows = read_lines(conn, after_seq, max_rows, max_bytes)
    records: list[Record] = []
    for seq, line in rows:
        try:
            record = decode_line(line)
        except RecordError as exc:
            raise LogDamaged(seq, f"the log table's line is not a valid record ({exc})") from exc
        if record.seq != seq:
            raise LogDamaged(seq, f"the log table's row holds the line of seq {record.seq}")
        records.append(record)
    return Committed(records, [line for _, line in rows])


class PgEngine(Engine):
    """The engine whose log and state are one PostgreSQL database (module docstring)."""

    def __init__(
        self,
        config: Config,
        conn: PgConnection,
        readers: PgReaders,
        password: str | None,
        read_only: LogDamaged | None = None,
        stats: EngineStats | None = None,
    ) -> None:
        # The engine's own code uses only what a DbConn offers (execute, in_transaction,
        # close); `paused()` and `replace_connection`, which hand the connection to SQLite-only
        # code (the verifier's repair), are the verifier's to adapt on PostgreSQL.
        super().__init__(config, cast(sqlite3.Connection, conn), None, readers, read_only, stats)
        self._pg = conn
        # Each append inserts its own block row, not staged with the batch's (engine.py):
        # PostgreSQL refuses text SQLite stores (a NUL), and that refusal must be the one
        # append's InvalidArgument, not the batch's undoing with every command answered an
        # InternalError (tests/engine/test_stateful.py's PostgreSQL run found it).
        self._staged = None
        self._check_line = refuse_nul
        self._password = password  # held for the follower's and snapshots' connections
        # Tells this daemon's notifications from the others' (which wake the follower).
        self._origin = secrets.token_hex(8)
        # PostgreSQL indexes each block in its own transaction: search is never behind.
        self._fts_seq = self._state_seq = self.last_seq
        self._unindexed = 0
        self.indexed_seq = self.last_seq
        # On the event loop: every event up to here was given to the subscribers.
        self.delivered_seq = self.last_seq
        self._follow_wakeup = anyio.Event()
        self._following = anyio.Event()
        # The follower's rounds, started and finished: a round started after a call read the
        # table after it (`delivered`).
        self._rounds_started = self._rounds_done = 0
        self._round_done: anyio.Event | None = None
        self._follower_stopped = False
        # The engine's subscribers list gets this daemon's batches, in order; `_own_batch`
        # passes them on to the real subscribers (`subscribe`) once they continue the events
        # delivered so far.
        self._pg_subscribers: list[Subscriber] = []
        super().subscribe(self._own_batch)

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
        """The engine's `open`, with the follower (LISTEN + the log table) running beside the
        writer until it stops."""
        async with super().open(config, fileops=fileops, read_only=read_only, head=head) as engine:
            assert isinstance(engine, PgEngine)
            async with anyio.create_task_group() as tg:
                tg.start_soon(engine._listen)
                tg.start_soon(engine._follow)
                try:
                    yield engine
                finally:
                    await engine.drain()  # the writer is done: nothing left to deliver
                    tg.cancel_scope.cancel()

    @classmethod
    def _open_sync(
        cls,
        config: Config,
        fileops: FileOps,
        read_only: LogDamaged | None,
        head: LogHead | None,
    ) -> Engine:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        where = _name(config)
        password = read_password(config.store)
        try:
            conn = connect(config.store.dsn, password)
            conn.execute(f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_S}s'")
        except sqlite3.Error as exc:
            raise StorageError(where, 0, f"cannot connect: {exc}") from exc
        try:
            if ensure_schema(conn):
                log.info("created the timelined schema in %s", where)
        except (PgSchemaError, sqlite3.Error) as exc:
            conn.close()
            raise StorageError(where, 0, str(exc)) from exc
        readers = PgReaders(config.store.dsn, password, config.store.read_pool_size)
        engine = cls(config, conn, readers, password, read_only)
        log.info("the log and state are in %s (last seq %d)", where, engine.last_seq)
        return engine

    # --- the storage hooks ---------------------------------------------------------------------

    @property
    def storage_name(self) -> str:
        return _name(self.config)

    def _close_storage(self) -> None:
        self._pg.close()

    async def data_version_changed(self) -> bool:
        """Never: other daemons commit to the database all the time, which is no tampering.
        The verifier's periodic run (verifier/pgrun.py) compares the state with a replay of the
        log table instead."""
        return False

    def _open_snapshot(self) -> ReadSnapshot:
        return PgReadSnapshot(self.config.store.dsn, self._password)

    def _reload_index_position(self) -> None:
        self._fts_seq = self._state_seq = self.last_seq
        self._unindexed = 0

    def _begin_batch(self, batch: list[Pending]) -> tuple[int, str]:
        """BEGIN and lock the head row: from here until COMMIT no other daemon's batch runs.
        A head that moved since this daemon's last batch is another daemon's: adopt it."""
        conn = self._pg
        conn.execute("BEGIN")
        head = "SELECT last_seq, last_hash FROM meta WHERE id = 1 FOR UPDATE"
        row = conn.execute(head).fetchone()
        if row is None:
            raise PgOperationalError("the meta table has no head row (id = 1)", None)
        seq, prev = int(row[0]), str(row[1])
        if (seq, prev) != (self.last_seq, self.last_hash):
            if seq <= self.last_seq:
                # Only a database restored behind the daemons' backs does this: writing on
                # would fork the chain that clients already hold.
                raise PgOperationalError(
                    f"the database's head is seq {seq}, but this daemon already wrote or saw "
                    f"seq {self.last_seq} ({self.last_hash[:12]}...): was it restored from an "
                    "older backup?",
                    None,
                )
            self._forget_cache(f"another daemon wrote seqs {self.last_seq + 1}..{seq}")
            self.last_seq, self.last_hash = seq, prev
            self._fts_seq = self._state_seq = seq
        return seq, prev

    def _write_batch(self, run: BatchToLog) -> Committed:
        """The log rows, the head and the notification, committed with the state; then (only
        then) the callers are answered. A failure here is fatal and answers nobody with
        success: whether a COMMIT whose connection broke took effect cannot be known."""
        batch, records, lines = run.batch, run.records, run.lines
        conn = self._pg
        seq, prev = records[-1].seq, records[-1].hash
        started = time.perf_counter()
        try:
            insert_lines(conn, records, lines)
            set_meta(conn, seq, prev)  # meta.fts_seq follows: a generated column
            conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, f"{self._origin} {seq}"))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            fatal = FatalStorageError(self.storage_name, 0, f"the batch's commit failed: {exc}")
            return self._abandon(batch, fatal)
        self.last_seq, self.last_hash = seq, prev
        self._fts_seq = self._state_seq = seq
        self.stats.events += len(records)
        self.stats.observe(len(batch), time.perf_counter() - started)
        self._answer_soon(batch, seq)
        return Committed(records, lines)

    def _answer_soon(self, batch: list[Pending], seq: int) -> None:
        """On the writer's thread, after the batch's COMMIT: hand its answers to the event loop
        now, before the call returns (the SQLite engine answers at the return itself)."""
        assert self._loop is not None, "batches run only under _writer_loop"
        try:
            self._loop.call_soon_threadsafe(self._acknowledged, batch, seq)
        except RuntimeError:  # the loop is closed: nobody is waiting for an answer
            pass

    def _acknowledged(self, batch: list[Pending], seq: int) -> None:
        """On the event loop: answer the batch (its events are committed)."""
        self.acked_seq = seq
        for pending in batch:
            pending.answer()

    # --- every event to the subscribers, in seq order ------------------------------------------

    def follow(self) -> None:
        """Start giving other daemons' events to the subscribers (once they are subscribed)."""
        self._following.set()
        self._follow_wakeup.set()

    @property
    def readable_seq(self) -> int:
        """The newest event this daemon knows committed: its own, or another daemon's given
        to the subscribers (the table holds both)."""
        return max(self.last_seq, self.delivered_seq)

    async def delivered(self) -> None:
        """Wait until the subscribers were given every event this daemon acknowledged before
        the call AND every event committed in the database before it, other daemons' too: the
        end of a follower round started after the call (at most DELIVERY_WAIT_S). A batch of
        this daemon that followed events not yet given reaches them only through the follower,
        after its callers were answered: without this, a proof of one's own acknowledged event
        could be refused, and two daemons' checkpoints asked at once would differ in size."""
        await self.caught_up()
        if not self._following.is_set() or self._follower_stopped:
            return
        want = self._rounds_started + 1
        self._follow_wakeup.set()
        with anyio.move_on_after(DELIVERY_WAIT_S):
            while self._rounds_done < want and not self._follower_stopped:
                if self._round_done is None:
                    self._round_done = anyio.Event()
                await self._round_done.wait()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(records, lines)` with every event of the database (this daemon's
        and the others'), in seq order, each once."""
        self._pg_subscribers.append(callback)
        return lambda: self._pg_subscribers.remove(callback)

    def _own_batch(self, records: list[Record], lines: list[bytes]) -> None:
        """This daemon's batch, committed: to the subscribers now if it continues what they
        got, else after the other daemons' events before it (the follower reads them)."""
        if not self._deliver(Committed(records, lines)):
            self._follow_wakeup.set()

    def _deliver(self, committed: Committed) -> bool:
        """Give the subscribers the events after `delivered_seq`; False (nothing given) when
        these do not continue it: events between are missing."""
        records, lines = committed
        start = 0
        while start < len(records) and records[start].seq <= self.delivered_seq:
            start += 1
        if start == len(records):
            return True
        if records[start].seq != self.delivered_seq + 1:
            return False
        if start:
            committed = Committed(records[start:], lines[start:])
        self.delivered_seq = records[-1].seq
        for callback in list(self._pg_subscribers):
            try:
                callback(*committed)
            except Exception:
                log.exception("a commit subscriber failed; it was skipped")
        return True

    async def _listen(self) -> None:
        """Wake the follower on each other daemon's notification; reconnect when lost."""
        kwargs: dict[str, Any] = {} if self._password is None else {"password": self._password}
        while True:
            try:
                listener = await psycopg.AsyncConnection.connect(
                    self.config.store.dsn,
                    autocommit=True,
                    application_name="timelined-listen",
                    **kwargs,
                )
                async with listener:
                    await listener.execute(f"LISTEN {CHANNEL}")
                    self._follow_wakeup.set()  # whatever committed before the LISTEN
                    async for note in listener.notifies():
                        if not note.payload.startswith(self._origin):
                            self._follow_wakeup.set()
            except psycopg.Error as exc:
                log.warning(
                    "LISTEN %s failed (%s); following the log table by polling every %.0f s",
                    CHANNEL,
                    exc,
                    FOLLOW_POLL_S,
                )
            await anyio.sleep(RELISTEN_S)

    async def _follow(self) -> None:
        await self._following.wait()
        while True:
            with anyio.move_on_after(FOLLOW_POLL_S):
                await self._follow_wakeup.wait()
            self._follow_wakeup = anyio.Event()
            self._rounds_started += 1
            try:
                await self._catch_up()
            except sqlite3.Error as exc:
                log.warning("could not read the log table to follow other daemons: %s", exc)
            except LogDamaged as exc:
                # Subscribers cannot skip an event; writing on would continue a damaged chain.
                log.error("following stopped, writes refused: %s", exc.message)
                self.degrade(exc)
                self._follower_stopped = True
                return
            finally:
                self._rounds_done = self._rounds_started
                done, self._round_done = self._round_done, None
                if done is not None:
                    done.set()

    async def _catch_up(self) -> None:
        """Deliver every event the log table holds after `delivered_seq`, page by page."""
        while True:
            after = self.delivered_seq
            page = await self.readers.run(read_committed, after, FOLLOW_ROWS, FOLLOW_BYTES)
            if not page.records:
                return
            # While the page was read, this daemon's own batches may have been delivered: the
            # page's start is skipped then. It continues `after`, so it continues them too.
            if not self._deliver(page):
                raise LogDamaged(
                    self.delivered_seq + 1,
                    f"the log table has no row for it (the next is seq {page.records[0].seq})",
                )


def _name(config: Config) -> str:
    """How errors and log lines name the database (the dsn, never with a password)."""
    return f"PostgreSQL {conninfo.redact(config.store.dsn)}"


__all__ = ["CHANNEL", "PgEngine", "read_committed"]
