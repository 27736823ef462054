"""The log table's rows for the tests: lines inserted as the engine inserts them, and a
connection lender that counts what is out (tests/pg/test_logsource.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from timelined.events import Record
from timelined.pgstore import logtable
from timelined.pgstore.schema import ensure_schema
from timelined.pgstore.sql import PgConnection, connect


class Lender:
    """Lends one connection per batch, counting what is out at any moment."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.out = 0
        self.lent = 0

    @contextmanager
    def __call__(self) -> Iterator[PgConnection]:
        conn = connect(self.dsn)
        self.out += 1
        self.lent += 1
        try:
            yield conn
        finally:
            self.out -= 1
            conn.close()


def insert_log(dsn: str, items: list[tuple[Record, bytes]]) -> None:
    with connect(dsn) as conn:
        ensure_schema(conn)
        if items:
            conn.execute("BEGIN")
            logtable.insert_lines(conn, [r for r, _ in items], [line for _, line in items])
            conn.execute("COMMIT")
