"""pgstore/reads.py: the read pool and the long-read snapshot on a real PostgreSQL server."""

from __future__ import annotations

import anyio
import pytest

from timelined.pgstore.reads import PgReaders, PgReadSnapshot
from timelined.pgstore.schema import ensure_schema
from timelined.pgstore.sql import PgConnection, PgOperationalError, connect
from timelined.state.db import read_meta
from timelined.state.dbapi import DbConn


def _set_head(conn: DbConn, seq: int) -> None:
    conn.execute("UPDATE meta SET last_seq = ?, last_hash = ? WHERE id = 1", (seq, f"{seq:064x}"))


def _two_reads(conn: DbConn, writer: PgConnection, seq: int) -> tuple[int, int]:
    """The head, another connection's commit, the head again: one snapshot sees no change."""
    before = read_meta(conn).last_seq
    _set_head(writer, seq)
    return before, read_meta(conn).last_seq


def test_a_pool_read_is_one_snapshot_and_the_next_sees_the_commit(pg_dsn: str) -> None:
    writer = connect(pg_dsn)
    ensure_schema(writer)

    async def main() -> None:
        readers = PgReaders(pg_dsn, None, 2)
        await readers.open()
        try:
            assert await readers.run(_two_reads, writer, 7) == (0, 0)
            assert (await readers.run(read_meta)).last_seq == 7
            # Reads run at once up to the pool's size; none blocks another's snapshot.
            async with anyio.create_task_group() as tg:
                for _ in range(6):
                    tg.start_soon(readers.run, read_meta)
            with pytest.raises(PgOperationalError):  # a failing query: its error, pool intact
                await readers.run(lambda c: c.execute("SELECT * FROM no_such_table"))
            assert (await readers.run(read_meta)).last_seq == 7
            await readers.reopen()
            assert (await readers.run(read_meta)).last_seq == 7
        finally:
            await readers.close()

    try:
        anyio.run(main)
    finally:
        writer.close()


def test_a_read_is_refused_writes(pg_dsn: str) -> None:
    writer = connect(pg_dsn)
    ensure_schema(writer)
    writer.close()

    async def main() -> None:
        readers = PgReaders(pg_dsn, None, 1)
        await readers.open()
        try:
            with pytest.raises(PgOperationalError, match="read-only"):
                await readers.run(_set_head, 9)
        finally:
            await readers.close()

    anyio.run(main)


def test_the_snapshot_holds_its_start_until_closed(pg_dsn: str) -> None:
    writer = connect(pg_dsn)
    try:
        ensure_schema(writer)
        _set_head(writer, 3)
        snap = PgReadSnapshot(pg_dsn, None)
        try:
            _set_head(writer, 4)
            assert snap.meta.last_seq == 3
            assert read_meta(snap.conn).last_seq == 3  # still the snapshot's start
        finally:
            snap.close()
        assert read_meta(writer).last_seq == 4
    finally:
        writer.close()


def test_an_unreachable_server_is_a_named_error() -> None:
    async def main() -> None:
        readers = PgReaders("host=/nonexistent-dir dbname=x", None, 1, timeout=1.0)
        with pytest.raises(PgOperationalError, match="could not connect"), anyio.fail_after(60):
            await readers.open()

    anyio.run(main)
