"""The verifier's replay: the log's records into a scratch database, through the one `apply`.

Two things make it faster than `state.replay.rebuild` without changing what `apply` does:

- records are decoded without hashing each line again: the chain check, which runs alongside in
  another process, verifies every hash and link; `apply_records` still checks that seqs follow
  and that each `prev` is the hash before it, and msgspec validates every member and the data
  against its event type (the timestamp's and prev's exact formats are left to the hash: a line
  whose hash verifies is byte for byte what the writer wrote);
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
from typing import Literal

import msgspec

from timelined.auditlog import OS_FILEOPS, list_segments
from timelined.auditlog.reader import iter_lines
from timelined.errors import LogDamaged
from timelined.events import Actor, BlockAppended, Record, decode_data
from timelined.state.apply import BlockRows
from timelined.state.replay import ReplayResult, apply_records
from timelined.state.schema import migrate

_READ_CHUNK = 4 << 20
REPLAY_CHUNK = 25_000  # events per scratch transaction (no journal: only the commit's cost)


class _Line(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One log line's members (auditlog.record's envelope), `data` left raw for its type."""

    seq: int
    ts: str
    type: str
    actor: Actor | Literal["daemon"]
    data: msgspec.Raw
    prev: str
    hash: str


_line = msgspec.json.Decoder(_Line)


class _BlockLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A block.appended line (nearly every line of a log), decoded in one pass."""

    seq: int
    ts: str
    type: str
    actor: Actor | Literal["daemon"]
    data: BlockAppended
    prev: str
    hash: str


_block_line = msgspec.json.Decoder(_BlockLine)


def decode_record(content: bytes) -> Record:
    """A line (without its newline) as a typed Record; raises ValueError when it is not one.

    A block.appended line is decoded in one pass: the same members and the same validation of
    its data as the two steps below (`data` as BlockAppended, with its own struct's rules).
    Any other line, or one that does not fit, takes the two steps, which name what is wrong.
    """
    try:
        block = _block_line.decode(content)
    except msgspec.DecodeError:
        pass
    else:
        if block.type == BlockAppended.type_name:
            return Record(
                seq=block.seq,
                ts=block.ts,
                actor=block.actor,
                event=block.data,
                prev=block.prev,
                hash=block.hash,
            )
    try:
        line = _line.decode(content)
        event = decode_data(line.type, line.data)
    except KeyError as exc:
        raise ValueError(f"unknown event type {exc}") from None
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None
    return Record(
        seq=line.seq, ts=line.ts, actor=line.actor, event=event, prev=line.prev, hash=line.hash
    )


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
            for _offset, content, complete in iter_lines(fops, handle, 0, _READ_CHUNK):
                if not complete:
                    if last:
                        return
                    raise LogDamaged(expected, "incomplete line inside the log", seg.name)
                try:
                    record = decode_record(content)
                except ValueError as exc:
                    raise LogDamaged(expected, f"unparsable: {exc}", seg.name) from None
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
