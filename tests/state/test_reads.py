"""state/reads.py: the SQLite read pool's snapshots."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from timelined.state.db import open_write, read_meta
from timelined.state.reads import Readers


class _Refused(Exception):
    """What a query raises half-way through its rows (a reply budget refusing a page)."""


def _refuse_mid_read(conn: sqlite3.Connection) -> None:
    rows = conn.execute("SELECT name FROM sqlite_master")  # more rows than one: left active
    assert rows.fetchone() is not None
    raise _Refused


def _set_head(conn: sqlite3.Connection, seq: int) -> None:
    conn.execute("UPDATE meta SET last_seq = ?, last_hash = ? WHERE id = 1", (seq, f"{seq:064x}"))


def test_a_read_that_raises_with_rows_left_does_not_keep_its_snapshot(tmp_path: Path) -> None:
    """The refused query's cursor lives on in the traceback's frames (the caller holds the
    error, as a handler logging it does); its statement must not hold the pooled connection in
    the old snapshot, where every later read on it would miss acknowledged writes."""
    path = tmp_path / "state.db"
    writer = open_write(path)

    async def main() -> None:
        readers = Readers(path, size=1)  # one connection: the next read takes the same one
        await readers.open()
        try:
            for seq in (7, 8):
                with pytest.raises(_Refused) as caught:
                    await readers.run(_refuse_mid_read)
                _set_head(writer, seq)
                assert (await readers.run(read_meta)).last_seq == seq
                assert caught.value.__traceback__ is not None  # still held, frames and all
        finally:
            await readers.close()

    try:
        anyio.run(main)
    finally:
        writer.close()
