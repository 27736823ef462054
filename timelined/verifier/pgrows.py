"""Reading PostgreSQL tables in bounded pages, in key order: the log table's lines and records.

Every read of the verifier on PostgreSQL goes through `pages`: keyset pagination on the
table's primary key (no OFFSET, no server-side cursor to keep open), each page bounded in rows
AND in bytes. The byte bound is the server's: a running sum of the rows' text sizes, so a page
of large blocks is cut short before it is sent, the first row always kept (a row is bounded by
the daemon's own limits). A test reads pages of a table with a byte bound smaller than one
row (tests/pg/test_verify_pg.py).

SQL is written as everywhere else in the code base (SQLite-flavoured, `?` parameters) and
translated by the connection (pgstore/sql.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from timelined.auditlog.record import RecordError, decode_line, decode_unhashed
from timelined.errors import LogDamaged
from timelined.events import Record
from timelined.state.dbapi import DbConn

PAGE_ROWS = 2000
PAGE_BYTES = 8 << 20
LOG_TABLE = "log"


def pages(
    conn: DbConn,
    table: str,
    columns: tuple[str, ...],
    pk: str,
    *,
    after: Any = None,
    upto: int | None = None,
    rows: int = PAGE_ROWS,
    max_bytes: int = PAGE_BYTES,
    size: str | None = None,
) -> Iterator[list[tuple[Any, ...]]]:
    """Pages of `columns` of `table` with `pk` > `after` (None: from the first), in `pk` order,
    up to `upto` (an integer key) if given. `pk` must be among `columns`. `size`: an SQL
    expression of a row's size over `columns` (default: their text, an upper bound)."""
    cols = ", ".join(f'"{c}"' for c in columns)
    size = size or f"octet_length(ROW({cols})::text)"
    at = columns.index(pk)
    while True:
        where = []
        params: list[Any] = []
        if after is not None:
            where.append(f'"{pk}" > ?')
            params.append(after)
        if upto is not None:
            where.append(f'"{pk}" <= ?')
            params.append(upto)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        # The LIMIT first (an index range), then the running sum over that page only.
        page = conn.execute(
            f"SELECT {cols} FROM (SELECT {cols}, {size} AS size_, "
            f'sum({size}) OVER (ORDER BY "{pk}") AS upto_ FROM '
            f'(SELECT {cols} FROM "{table}" {clause}ORDER BY "{pk}" LIMIT ?) AS page_) AS p '
            f'WHERE upto_ = size_ OR upto_ <= ? ORDER BY "{pk}"',
            (*params, rows, max_bytes),
        ).fetchall()
        if not page:
            return
        yield [tuple(row) for row in page]
        after = page[-1][at]


def log_rows(
    conn: DbConn, *, after_seq: int = 0, upto_seq: int | None = None
) -> Iterator[tuple[int, str, bytes]]:
    """(seq, hash, line) of the log table's rows, in seq order; `line` ends with its newline."""
    for page in pages(
        conn,
        LOG_TABLE,
        ("seq", "hash", "line"),
        "seq",
        after=after_seq,
        upto=upto_seq,
        size="octet_length(line) + 90",  # the line, its hash and seq
    ):
        for seq, digest, line in page:
            yield int(seq), str(digest), bytes(line)


def table_records(
    conn: DbConn, *, after_seq: int = 0, upto_seq: int | None = None, hashed: bool = True
) -> Iterator[Record]:
    """The log table's records, decoded and validated; with `hashed`, every line's hash too
    (`decode_line`, what a rebuild needs), else not (`decode_unhashed`: the verifier's replay,
    whose chain check hashes every line). Raises LogDamaged for a line that cannot be read."""
    for seq, _digest, line in log_rows(conn, after_seq=after_seq, upto_seq=upto_seq):
        try:
            if hashed:
                record = decode_line(line)
            elif line[-1:] != b"\n" or b"\n" in line[:-1]:
                raise RecordError("framing", "the row's line is not one line ending in a newline")
            else:
                record = decode_unhashed(line[:-1])
        except RecordError as exc:
            raise LogDamaged(seq, f"unparsable: {exc.detail}", None) from None
        yield record
