"""The PostgreSQL log table as a `LogSource` (the contract: timelined/auditlog/source.py).

Lines are fetched in bounded batches (`logtable.read_lines`: at most `batch_rows` rows and
`batch_bytes` bytes, the bound applied by the server), each batch on a connection taken from
`connect` and given back before the first line of the batch is yielded: a reader paused between
two lines (a slow watcher, an export waiting for its socket) holds no connection. Every line is
checked as the file reader checks it (`auditlog.reader.chained`: seq, frame, hash, link), so a
row that is not what the writer inserted raises the same `LogDamaged`.

The daemon constructs it with a callable that lends a `PgConnection` for one batch, e.g. over
its read pool (`pgstore/reads.py`; a psycopg_pool.ConnectionPool opened with autocommit):

    @contextmanager
    def lend() -> Iterator[PgConnection]:
        with pool.connection() as raw:  # back to the pool at the end of the batch
            yield PgConnection(raw)     # not used as a context manager: that would close it

    source = TableLogSource(lend)

and passes it as `App(log=source)` (ReadLog, Watch, exports, GetStatus) and to
`Transparency.open(config, head_seq, source)` (the Merkle tree's boot catch-up and rebuild).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import psycopg

from timelined.auditlog.reader import chained
from timelined.auditlog.source import LogFigures
from timelined.errors import LogDamaged
from timelined.pgstore import logtable
from timelined.pgstore.sql import PgConnection

log = logging.getLogger(__name__)

BATCH_ROWS = 1000
# A batch's lines are held at once: 4 MiB of them, or one line alone when it is larger (the
# writer's lines are bounded by limits.max_block_bytes and the reply limit).
BATCH_BYTES = 4 << 20

Connect = Callable[[], AbstractContextManager[PgConnection]]


class TableLogSource:
    """The `log` table of a PostgreSQL database (pgstore/schema.py)."""

    backend = "table"

    def __init__(
        self, connect: Connect, batch_rows: int = BATCH_ROWS, batch_bytes: int = BATCH_BYTES
    ) -> None:
        if batch_rows < 1 or batch_bytes < 1:
            raise ValueError("batch_rows and batch_bytes must be at least 1")
        self._connect = connect
        self.batch_rows = batch_rows
        self.batch_bytes = batch_bytes

    def lines(self, after_seq: int, upto_seq: int) -> Iterator[tuple[int, bytes]]:
        return chained(self._rows(after_seq, upto_seq), after_seq)

    def line(self, seq: int) -> bytes | None:
        return next((line for _, line in self.lines(seq - 1, seq)), None)  # one indexed row

    def _rows(self, after_seq: int, upto_seq: int) -> Iterator[tuple[int, bytes, str | None]]:
        position = after_seq
        while position < upto_seq:
            rows = self._batch(position, min(self.batch_rows, upto_seq - position))
            if not rows:
                return  # the table ends before upto_seq
            for seq, line in rows:
                if not line.endswith(b"\n"):
                    # insert_lines refuses such a row: one in the table was put there otherwise.
                    raise LogDamaged(seq, "incomplete line inside the log")
                yield seq, line[:-1], None
            position = rows[-1][0]

    def _batch(self, after_seq: int, max_rows: int) -> list[tuple[int, bytes]]:
        with self._connect() as conn:
            return logtable.read_lines(conn, after_seq, max_rows, self.batch_bytes)

    def segment_starts(self, after_seq: int, upto_seq: int) -> None:
        return None  # a table has no segments: export-log cuts at [log] segment_bytes

    def figures(self) -> LogFigures | None:
        try:
            with self._connect() as conn:
                row = conn.execute("SELECT pg_total_relation_size('log')").fetchone()
        # PgConnection raises psycopg's errors as sqlite3's; a pool lending one raises its own.
        except (sqlite3.Error, psycopg.Error) as exc:
            log.warning("the log table's figures cannot be read: %s", exc)
            return None
        return LogFigures(self.backend, int(row[0]) if row is not None else 0, None)
