"""The read side on PostgreSQL: a pool of connections with state/reads.Readers' interface.

The query functions of state/queries.py are synchronous (one code for the writer, the readers,
replay and the verifier); each `run` takes a connection of psycopg_pool's pool on a worker
thread and runs the whole function in one REPEATABLE READ, READ ONLY transaction: every SELECT
of it sees the same snapshot, as a read transaction does on SQLite's WAL. A slow reader never
blocks the writer (PostgreSQL's MVCC), and the pool bounds how many run at once.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import anyio
from psycopg_pool import ConnectionPool, PoolTimeout

from timelined.pgstore.sql import PgConnection, PgOperationalError, connect
from timelined.state.db import read_meta
from timelined.state.dbapi import DbConn
from timelined.state.reads import ReadSnapshot

P = ParamSpec("P")
T = TypeVar("T")

SNAPSHOT_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
# How long a read waits for the server (connecting, or a free connection when the pool's
# connections are all broken and being replaced) before it fails with a named error.
CONNECT_TIMEOUT_S = 30.0


def in_snapshot(
    conn: PgConnection,
    fn: Callable[Concatenate[DbConn, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """`fn(conn, ...)` inside one read-only snapshot transaction, ended whatever happens."""
    conn.execute(SNAPSHOT_BEGIN)
    try:
        result = fn(conn, *args, **kwargs)
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # the first error is the one to report
            conn.execute("ROLLBACK")
        raise
    conn.execute("ROLLBACK")  # nothing to keep: the transaction only read
    return result


class PgReaders:
    """A fixed pool of read connections to the database (`ReadPool`)."""

    def __init__(
        self, conninfo: str, password: str | None, size: int, *, timeout: float = CONNECT_TIMEOUT_S
    ) -> None:
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": "timelined-reader"}
        if password is not None:
            kwargs["password"] = password  # beside the conninfo, never inside it
        self._pool = ConnectionPool(
            conninfo,
            min_size=size,
            max_size=size,
            kwargs=kwargs,
            open=False,
            name="timelined-readers",
            timeout=timeout,
        )
        self._timeout = timeout
        self._slots = anyio.Semaphore(size)

    async def open(self) -> None:
        def open_sync() -> None:
            try:
                self._pool.open(wait=True, timeout=self._timeout)
            except PoolTimeout as exc:
                self._pool.close()
                raise PgOperationalError(f"the read pool could not connect: {exc}", None) from exc

        await anyio.to_thread.run_sync(open_sync)

    async def run(
        self, fn: Callable[Concatenate[DbConn, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        def run_sync() -> T:
            try:
                with self._pool.connection() as raw:
                    return in_snapshot(PgConnection(raw), fn, *args, **kwargs)
            except PoolTimeout as exc:
                raise PgOperationalError(f"no read connection: {exc}", None) from exc

        async with self._slots:
            return await anyio.to_thread.run_sync(run_sync)

    @contextlib.contextmanager
    def lend(self) -> Iterator[PgConnection]:
        """A pooled connection for one batch of a log reader (pgstore/logsource.py), given
        back at the end of the batch."""
        try:
            with self._pool.connection() as raw:
                yield PgConnection(raw)
        except PoolTimeout as exc:
            raise PgOperationalError(f"no read connection: {exc}", None) from exc

    async def reopen(self) -> None:
        """Nothing to reopen: a repair rebuilds the state tables in place, in a transaction
        every pooled connection sees once it commits."""

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._pool.close)


class PgReadSnapshot(ReadSnapshot):
    """A connection of its own in one snapshot transaction, for a read too long for the pool
    (an export); closed as state/reads.ReadSnapshot is."""

    def __init__(self, conninfo: str, password: str | None) -> None:  # not the SQLite file's
        conn = connect(conninfo, password, application_name="timelined-snapshot")
        try:
            conn.execute(SNAPSHOT_BEGIN)
            self.meta = read_meta(conn)  # the snapshot starts here
        except BaseException:
            conn.close()
            raise
        # SEAM (exports on PostgreSQL): the export's code is typed on the SQLite connection;
        # what it runs on this one is a DbConn's (execute, fetch).
        self.conn = cast(sqlite3.Connection, conn)


__all__ = ["PgReadSnapshot", "PgReaders", "in_snapshot"]
