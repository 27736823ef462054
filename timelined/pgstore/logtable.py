"""The log table: one row per event, its exact line (as the file log would hold it).

Rows are only ever inserted (the table's triggers refuse anything else: pgstore/schema.py),
in the batch's transaction together with the state change, so a committed event has both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from timelined.events import Record
from timelined.pgstore.schema import GENESIS_HASH
from timelined.pgstore.sql import PgConnection


class LogHead(NamedTuple):
    seq: int  # 0 for an empty log
    hash: str  # the genesis hash (64 zeros) for an empty log


def insert_lines(conn: PgConnection, records: Sequence[Record], lines: Sequence[bytes]) -> None:
    """Append the batch's lines (inside the caller's transaction); `lines[i]` is `records[i]`'s
    line, newline included, exactly as auditlog.record.encode_record made it."""
    if len(records) != len(lines):
        raise ValueError(f"{len(records)} records but {len(lines)} lines")
    for record, line in zip(records, lines, strict=True):
        if not line.endswith(b"\n"):
            raise ValueError(f"the line of seq {record.seq} does not end with a newline")
    conn.executemany(
        "INSERT INTO log (seq, hash, line) VALUES (?, ?, ?)",
        [(r.seq, r.hash, line) for r, line in zip(records, lines, strict=True)],
    )


def read_lines(
    conn: PgConnection, after_seq: int, max_rows: int, max_bytes: int
) -> list[tuple[int, bytes]]:
    """The lines after `after_seq`, in seq order: at most `max_rows` of them, and no more bytes
    than `max_bytes` unless the first line alone is longer (it comes alone then, so a reader
    always moves on). The bound is applied by the server: no line past it is sent."""
    if max_rows < 1 or max_bytes < 1:
        raise ValueError("max_rows and max_bytes must be at least 1")
    rows = conn.execute(
        "SELECT seq, line FROM ("
        " SELECT seq, line, sum(octet_length(line)) OVER (ORDER BY seq) - octet_length(line)"
        "  AS before FROM (SELECT seq, line FROM log WHERE seq > ? ORDER BY seq LIMIT ?) page"
        ") counted WHERE before = 0 OR before + octet_length(line) <= ? ORDER BY seq",
        (after_seq, max_rows, max_bytes),
    ).fetchall()
    return [(int(seq), bytes(line)) for seq, line in rows]


def head(conn: PgConnection) -> LogHead:
    """The last row's seq and hash (the log's own head, whatever meta says)."""
    row = conn.execute("SELECT seq, hash FROM log ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return LogHead(0, GENESIS_HASH)
    return LogHead(int(row[0]), str(row[1]))
