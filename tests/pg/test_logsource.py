"""One contract suite for every `LogSource` (timelined/auditlog/source.py), eventsourcing style:
`LogSourceContract` holds the tests, each subclass only says how to store a log's lines in its
backend — the segment files (`FileLogSource`, written by the real LogWriter) and the PostgreSQL
log table (`TableLogSource`, rows inserted by `logtable.insert_lines` on a real server). Both must
give the same lines for the same ranges, stop at the same bounds and name the same damage."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from tests.auditlog.conftest import make_lines
from tests.pg.logrows import Lender, insert_log
from timelined.auditlog.record import GENESIS_PREV
from timelined.auditlog.source import FileLogSource, LogSource
from timelined.auditlog.writer import LogHead, LogWriter
from timelined.errors import LogDamaged
from timelined.events import Record
from timelined.pgstore import logtable
from timelined.pgstore.logsource import TableLogSource
from timelined.pgstore.sql import PgConnection, connect

COUNT = 57
SEGMENT_BYTES = 4096  # the file log gets several segments
Store = Callable[[list[tuple[Record, bytes]]], LogSource]


def _rehash(line: bytes) -> bytes:
    """A line edited in its data, then given the hash its new bytes have (a forgery: it hashes
    right, so only the next line's link can catch it)."""
    content = line[:-1]
    cut = content.rfind(b',"hash":')
    digest = hashlib.sha256(content[:cut] + b"}").hexdigest().encode()
    return content[:cut] + b',"hash":"' + digest + b'"}\n'


def _edit(line: bytes) -> bytes:
    """One byte of the line's data changed (its hash no longer matches)."""
    at = line.index(b'"data":') + 9
    return line[:at] + (b"Q" if line[at : at + 1] != b"Q" else b"R") + line[at + 1 :]


def _damaged_at(source: LogSource, after: int, seq: int, reason: str) -> None:
    """Reading from `after` to the end raises LogDamaged naming `seq` and `reason`."""
    with pytest.raises(LogDamaged) as caught:
        list(source.lines(after, COUNT))
    assert caught.value.params["seq"] == seq
    assert reason in caught.value.params["reason"]


class LogSourceContract:
    @pytest.fixture
    def store(self) -> Store:
        raise NotImplementedError

    @pytest.fixture
    def items(self) -> list[tuple[Record, bytes]]:
        return make_lines(COUNT)

    def test_every_range_gives_the_lines_of_the_log(
        self, store: Store, items: list[tuple[Record, bytes]]
    ) -> None:
        source = store(items)
        expected = [(r.seq, line) for r, line in items]
        for after in (0, 1, 2, 16, 30, COUNT - 1, COUNT, COUNT + 3):
            for upto in (after, after + 1, after + 7, COUNT - 1, COUNT, COUNT + 50):
                got = list(source.lines(after, upto))
                assert got == [e for e in expected if after < e[0] <= upto], (after, upto)
        assert b"".join(line for _, line in source.lines(0, COUNT)) == b"".join(
            line for _, line in items
        )

    def test_one_line_is_the_line_of_its_range(
        self, store: Store, items: list[tuple[Record, bytes]]
    ) -> None:
        source = store(items)
        for seq, line in source.lines(0, COUNT):
            assert source.line(seq) == line
        assert source.line(COUNT + 1) is None

    def test_one_damaged_line_is_damage_named_by_its_seq(
        self, store: Store, items: list[tuple[Record, bytes]]
    ) -> None:
        damaged = list(items)
        damaged[20] = (items[20][0], _edit(items[20][1]))
        source = store(damaged)
        assert source.line(22) == items[21][1]
        with pytest.raises(LogDamaged) as caught:
            source.line(21)
        assert caught.value.params["seq"] == 21

    def test_an_empty_log_has_no_lines(self, store: Store) -> None:
        source = store([])
        assert list(source.lines(0, 10)) == []
        assert source.line(1) is None
        figures = source.figures()
        assert figures.stored_bytes >= 0 and figures.segments in (0, None)

    def test_a_line_whose_hash_is_wrong_is_damage_named_by_its_seq(
        self, store: Store, items: list[tuple[Record, bytes]]
    ) -> None:
        damaged = list(items)
        damaged[20] = (items[20][0], _edit(items[20][1]))
        source = store(damaged)
        assert len(list(source.lines(0, 20))) == 20  # before it: read as usual
        _damaged_at(source, 10, 21, "hash mismatch")

    def test_a_forged_line_breaks_the_next_link(
        self, store: Store, items: list[tuple[Record, bytes]]
    ) -> None:
        forged = list(items)
        forged[30] = (items[30][0], _rehash(_edit(items[30][1])))
        source = store(forged)
        assert list(source.lines(0, 31))[-1] == (31, forged[30][1])  # self-consistent
        _damaged_at(source, 0, 32, "prev does not match")

    def test_the_first_line_links_to_genesis(
        self, store: Store, items: list[tuple[Record, bytes]]
    ) -> None:
        # A log whose seq 1 claims some other prev: read from 0, the link is checked.
        first, line = items[0]
        bad = line.replace(GENESIS_PREV.encode(), b"1" * 64, 1)
        _damaged_at(store([(first, _rehash(bad))]), 0, 1, "prev does not match")

    def test_segment_starts_lie_in_the_range(
        self, store: Store, items: list[tuple[Record, bytes]]
    ) -> None:
        source = store(items)
        whole = source.segment_starts(0, COUNT)
        if whole is None:
            assert source.figures().segments is None  # a log without segments says so
            return
        assert whole[0] == 1 and whole == sorted(whole) and len(whole) > 1
        assert source.segment_starts(whole[1], COUNT) == whole[2:]
        assert source.segment_starts(0, whole[1]) == whole[:2]
        assert source.figures().segments == len(whole)

    def test_figures(self, store: Store, items: list[tuple[Record, bytes]]) -> None:
        figures = store(items).figures()
        assert figures.backend in ("file", "table")
        assert figures.stored_bytes >= sum(len(line) for _, line in items)


class TestFileLogSource(LogSourceContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Store:
        def make(items: list[tuple[Record, bytes]]) -> LogSource:
            log_dir = tmp_path / "log"
            writer = LogWriter(log_dir, LogHead(), segment_bytes=SEGMENT_BYTES, fsync="off")
            for record, line in items:
                writer.write_batch(line, record.seq, record.seq, record.hash)
            writer.close()
            return FileLogSource(log_dir)

        return make

    def test_figures_of_an_unreadable_log_are_none(self, tmp_path: Path) -> None:
        """GetStatus answers without them rather than fail."""
        (tmp_path / "log").write_text("not a directory")
        assert FileLogSource(tmp_path / "log").figures() is None


class TestTableLogSource(LogSourceContract):
    @pytest.fixture
    def store(self, pg_dsn: str) -> Store:
        def make(items: list[tuple[Record, bytes]]) -> LogSource:
            insert_log(pg_dsn, items)
            # Small batches: every range above spans several of them.
            return TableLogSource(Lender(pg_dsn), batch_rows=8, batch_bytes=1 << 20)

        return make

    def test_batches_are_bounded_and_a_paused_reader_holds_no_connection(
        self, pg_dsn: str, items: list[tuple[Record, bytes]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        insert_log(pg_dsn, items)
        batches: list[list[tuple[int, bytes]]] = []
        real = logtable.read_lines

        def recorded(
            conn: PgConnection, after: int, rows: int, size: int
        ) -> list[tuple[int, bytes]]:
            batches.append(real(conn, after, rows, size))
            return batches[-1]

        monkeypatch.setattr(logtable, "read_lines", recorded)
        lender = Lender(pg_dsn)
        bound = max(len(line) for _, line in items) * 3
        source = TableLogSource(lender, batch_rows=1000, batch_bytes=bound)
        reading = source.lines(0, COUNT)
        assert next(reading)[0] == 1
        assert lender.out == 0  # paused: the batch's connection went back before the yield
        rest = list(reading)
        assert [seq for seq, _ in rest] == list(range(2, COUNT + 1))
        assert len(batches) > 3 and all(sum(len(x) for _, x in b) <= bound for b in batches)
        # One line larger than the byte bound comes alone, never stalls.
        batches.clear()
        tiny = TableLogSource(lender, batch_rows=1000, batch_bytes=1)
        assert [seq for seq, _ in tiny.lines(0, 5)] == [1, 2, 3, 4, 5]
        assert [len(b) for b in batches] == [1] * 5
        # Rows: never more than asked, nor past upto.
        batches.clear()
        assert len(list(TableLogSource(lender, batch_rows=4).lines(3, 13))) == 10
        assert [b[0][0] for b in batches] == [4, 8, 12] and [len(b) for b in batches] == [4, 4, 2]

    def test_a_row_without_its_newline_is_damage(
        self, pg_dsn: str, items: list[tuple[Record, bytes]]
    ) -> None:
        insert_log(pg_dsn, items[:3])
        record, line = items[3]
        with connect(pg_dsn) as conn:  # insert_lines refuses it: put there by other hands
            conn.execute(
                "INSERT INTO log (seq, hash, line) VALUES (?, ?, ?)",
                (record.seq, record.hash, line[:-1]),
            )
        with pytest.raises(LogDamaged) as caught:
            list(TableLogSource(Lender(pg_dsn)).lines(0, 10))
        assert caught.value.params["seq"] == 4

    def test_over_a_connection_pool_as_the_daemon_lends_them(
        self, pg_dsn: str, items: list[tuple[Record, bytes]]
    ) -> None:
        """The construction pgstore/logsource.py's docstring gives the daemon."""
        insert_log(pg_dsn, items)
        with ConnectionPool(pg_dsn, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:

            @contextmanager
            def lend() -> Iterator[PgConnection]:
                with pool.connection() as raw:
                    yield PgConnection(raw)

            source = TableLogSource(lend, batch_rows=10)
            assert list(source.lines(0, COUNT)) == [(r.seq, line) for r, line in items]
            assert source.figures().backend == "table"
            assert pool.get_stats()["pool_size"] <= 2

    def test_figures_of_an_unreachable_table_are_none(self, pg_dsn: str) -> None:
        """GetStatus answers without them rather than fail."""
        assert TableLogSource(Lender(pg_dsn + "_gone")).figures() is None
