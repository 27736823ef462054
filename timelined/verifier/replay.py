"""The verifier's replay: the log's records into a scratch database, through the one `apply`.

Two things make it faster than `state.replay.rebuild` without changing what `apply` does:

- records are decoded without hashing each line again (`auditlog.record.decode_unhashed`): the
  chain check, which runs alongside in another process, verifies every hash and link;
  `apply_records` still checks that seqs follow and that each `prev` is the hash before it, and
  msgspec validates every member and the data against its event type (the timestamp's and
  prev's exact formats are left to the hash: a line whose hash verifies is byte for byte what
  the writer wrote);
- the scratch's FTS5 index stays empty: its connection tells `apply` to skip it. The search
  index is derived from `blocks.content`, which is compared in full; the live index is checked
  on its own (compare.py, blocks.py);
- the scratch's blocks table stays empty too: `apply` hands each block's row to the verifier's
  merge with the state's blocks (blocks.py) instead of inserting it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

from timelined.auditlog.fileops import OS_FILEOPS
from timelined.auditlog.reader import iter_lines
from timelined.auditlog.record import RecordError, decode_unhashed
from timelined.auditlog.segments import list_segments
from timelined.errors import LogDamaged
from timelined.events import Record
from timelined.state.apply import BlockRows
from timelined.state.replay import ReplayResult, apply_records
from timelined.state.schema import migrate

_READ_CHUNK = 4 << 20
REPLAY_CHUNK = 25_000  # events per scratch transaction (no journal: only the commit's cost)


def log_records(log_dir: Path, upto_seq: int | None = None) -> Iterator[Record]:
    """Records from seq 1 to `upto_seq` (or the log's end), decoded and validated, not re-hashed.

    Stops early, without error, where the log ends; raises LogDamaged for a line it cannot
    decode or an unfinished line before the last segment's end.
    """
    if upto_seq is not None and upto_seq <= 0:
        return
    fops = OS_FILEOPS
    segments = list_segments(log_dir, fops)
    expected = 1
    for index, seg in enumerate(segments):
        last = index == len(segments) - 1
        handle = fops.open_read(seg.path)
        try:
            # The last segment's end: a write in progress, or the space the writer reserved.
            lines = iter_lines(fops, handle, 0, _READ_CHUNK, stop_at_nul=last, skip_nul_chunks=last)
            for _offset, content, complete in lines:
                if not complete:
                    if last:
                        return
                    raise LogDamaged(expected, "incomplete line inside the log", seg.name)
                try:
                    record = decode_unhashed(content)
                except RecordError as exc:
                    raise LogDamaged(expected, f"unparsable: {exc.detail}", seg.name) from None
                yield record
                if record.seq == upto_seq:
                    return
                expected = record.seq + 1
        finally:
            fops.close(handle)


class ReplayConnection(sqlite3.Connection):
    """A scratch connection whose replays skip the FTS index and, given `block_rows`, hand the
    blocks on as rows instead of inserting them (state.apply reads both attributes)."""

    search_index = False
    block_rows: BlockRows | None = None


def open_replay_scratch(path: Path) -> sqlite3.Connection:
    """A scratch state database with the real schema, whose FTS index `apply` leaves empty."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, factory=ReplayConnection
    )
    # As state.db.open_scratch: a throwaway file needs no journal and no fsync. The larger cache
    # keeps the index that inserts touch at random (blocks by context) in memory at 1M events.
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -131072")
    migrate(conn)
    return conn


def replay_into(
    conn: sqlite3.Connection,
    log_dir: Path,
    upto_seq: int,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Apply the log's records up to `upto_seq` (or its end, if shorter) to `conn`."""
    return apply_records(
        conn,
        log_records(log_dir, upto_seq),
        chunk=REPLAY_CHUNK,
        progress=progress,
        stop_at=upto_seq,
    )


def remove_db(path: Path) -> None:
    """Remove a database file and its journal, WAL and shared-memory files."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
