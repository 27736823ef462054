"""The read side: query functions run on aiosqlite read-only threads, and long snapshots.

aiosqlite gives each connection its own thread and a queue of callables; `ReadConnection.run`
puts a whole query function on that queue, so a multi-statement read (history, startup state)
is one hop to the thread and one consistent snapshot, and queries are written once for the
writer, the readers, replay and the verifier. `ReadSnapshot` is one read-only connection held
in one transaction for as long as a long read (an export) takes.
"""

from __future__ import annotations

import sqlite3
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol, TypeVar, cast

import aiosqlite
import anyio

from timelined.state.db import open_read, read_meta
from timelined.state.dbapi import DbConn
from timelined.state.model import Meta

P = ParamSpec("P")
T = TypeVar("T")


def _in_snapshot(
    fn: Callable[Concatenate[sqlite3.Connection, P], T],
    conn: sqlite3.Connection,
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    # One read transaction: every SELECT of the function sees the same WAL snapshot.
    conn.execute("BEGIN")
    try:
        return fn(conn, *args, **kwargs)
    except BaseException as exc:
        # A query that raised with rows left (a reply budget refusing a page) leaves its cursor
        # alive in the traceback's frames, and an active statement holds this connection's read
        # snapshot past the COMMIT: every later read on it would miss acknowledged writes until
        # the garbage collector freed the error. The frames' locals go (their lines stay).
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        conn.execute("COMMIT")


class ReadConnection(aiosqlite.Connection):
    """An aiosqlite connection that runs whole query functions on its thread."""

    async def run(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        # _execute is aiosqlite's own bridge (queue a callable, await its future); every public
        # method of aiosqlite is built on it. tests/state/test_reads.py pins that it exists.
        result = await self._execute(  # type: ignore[no-untyped-call]
            _in_snapshot, fn, self._conn, *args, **kwargs
        )
        return cast(T, result)


class ReadPool(Protocol):
    """What the engine needs of a read pool: `Readers` here, pgstore.reads.PgReaders on
    PostgreSQL. `run` runs a whole query function in one snapshot on a connection of its own."""

    async def open(self) -> None: ...

    async def run(
        self, fn: Callable[Concatenate[DbConn, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    async def reopen(self) -> None: ...

    async def close(self) -> None: ...


class Readers:
    """A fixed pool of read-only connections; a slow reader never blocks the writer."""

    def __init__(self, path: Path, size: int = 3) -> None:
        self._path = path
        self._size = size
        self._free: list[ReadConnection] = []
        self._all: list[ReadConnection] = []
        self._slots = anyio.Semaphore(size)

    async def open(self) -> None:
        for _ in range(self._size):
            conn = ReadConnection(lambda: open_read(self._path), iter_chunk_size=64)
            await conn
            self._free.append(conn)
            self._all.append(conn)

    async def run(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        async with self._slots:
            conn = self._free.pop()
            try:
                return await conn.run(fn, *args, **kwargs)
            finally:
                self._free.append(conn)

    async def reopen(self) -> None:
        """Close and reopen every connection (after the state file was swapped by a repair).

        Every slot is taken first, so reads in progress finish on their old connection: one
        closed under them would fail, and would go back to the pool closed.
        """
        taken = 0
        try:
            while taken < self._size:
                await self._slots.acquire()
                taken += 1
            await self.close()
            await self.open()
        finally:
            for _ in range(taken):
                self._slots.release()

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()
        self._all.clear()
        self._free.clear()


class ReadSnapshot:
    """A read-only connection of its own inside one transaction, for a read too long for the
    pool (an export pulls its parts from it a few at a time, as the socket takes them)."""

    def __init__(self, path: Path) -> None:
        self.conn = open_read(path)
        try:
            self.conn.execute("BEGIN")
            self.meta: Meta = read_meta(self.conn)  # the snapshot starts here
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        try:
            self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self.conn.close()


__all__ = ["ReadConnection", "ReadPool", "ReadSnapshot", "Readers"]
