"""Helpers for the audit log tests: sample events, logs written by the real writer, and
FileOps fakes for the faults that cannot be caused for real (a failing fsync, a full disk)."""

from __future__ import annotations

import errno
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from timelined.auditlog.fileops import Handle, OsFileOps
from timelined.auditlog.record import GENESIS_PREV, encode_record
from timelined.auditlog.writer import LogHead, LogWriter
from timelined.events import (
    DAEMON,
    Actor,
    ActorLike,
    BlockAppended,
    BlockData,
    ContextFocused,
    ContextSpawned,
    ConversationCreated,
    Event,
    Record,
    SubBlock,
)

TS = "2026-11-22T03:38:00.123456Z"


def sample_event(i: int) -> Event:
    """A varied event: several types, unicode, and metadata holding a "hash" key (which puts
    `,"hash":` inside data, so the hash rule must take the line's last one)."""
    kind = i % 4
    if kind == 0:
        return ConversationCreated(
            conversation_id=f"conv_{i}", name=f"talk {i} ✓", root_context_id=f"ctx_{i}"
        )
    if kind == 1:
        return ContextSpawned(
            context_id=f"ctx_{i}s",
            conversation_id=f"conv_{i}",
            parent_id=f"ctx_{i}",
            reason="look something up",
            inherit_last=2,
            parent_blocks=5,
        )
    if kind == 2:
        return BlockAppended(
            block=BlockData(
                id=f"blk_{i}",
                context_id=f"ctx_{i}",
                role="assistant",
                content=f'line one\nline two "quoted" {i} — ünïcode 🚀' * (1 + i % 3),
                timestamp=TS,
                tokens_output=i,
                metadata={"a": 1, "hash": "not the member", "z": [1, 2]},
                sub_blocks=[SubBlock(type="thinking", content="hmm")],
            )
        )
    return ContextFocused(context_id=f"ctx_{i}")


def actor_for(i: int) -> ActorLike:
    return DAEMON if i % 3 == 0 else Actor(uid=1000 + i % 2, gid=1000, pid=4000 + i)


def make_lines(count: int, start: int = 1, prev: str = GENESIS_PREV) -> list[tuple[Record, bytes]]:
    out = []
    for seq in range(start, start + count):
        record, line = encode_record(seq, TS, actor_for(seq), sample_event(seq), prev)
        out.append((record, line))
        prev = record.hash
    return out


def write_log(
    log_dir: Path, count: int, *, segment_bytes: int = 1 << 20, batch: int = 1
) -> list[tuple[Record, bytes]]:
    """A log of `count` records written by LogWriter (fsync off: speed), `batch` per write."""
    items = make_lines(count)
    writer = LogWriter(log_dir, LogHead(), segment_bytes=segment_bytes, fsync="off")
    for i in range(0, count, batch):
        chunk = items[i : i + batch]
        writer.write_batch(
            b"".join(line for _, line in chunk),
            chunk[0][0].seq,
            chunk[-1][0].seq,
            chunk[-1][0].hash,
        )
    writer.close()
    return items


def segment_files(log_dir: Path) -> list[Path]:
    return sorted(p for p in log_dir.iterdir() if p.name.endswith(".jsonl"))


def log_bytes(log_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(log_dir.iterdir())}


class FaultyOps(OsFileOps):
    """Real file operations that count calls and fail on demand.

    `fail_fsync_at`: the N-th fsync (1-based, counting file and directory fsyncs) raises EIO.
    `space`: bytes the disk still takes; a write past it is short, the next raises ENOSPC.
    `write_errno`: every write raises this errno.
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.opened: list[str] = []
        self.fail_fsync_at: int | None = None
        self.space: int | None = None
        self.write_errno: int | None = None

    def _fsync_fault(self) -> None:
        n = self.calls["fsync"] + self.calls["fsync_dir"]
        if self.fail_fsync_at is not None and n == self.fail_fsync_at:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def fsync(self, handle: Handle) -> None:
        self.calls["fsync"] += 1
        self._fsync_fault()
        super().fsync(handle)

    def fsync_dir(self, path: str) -> None:
        self.calls["fsync_dir"] += 1
        self._fsync_fault()
        super().fsync_dir(path)

    def write(self, handle: Handle, data: bytes | memoryview) -> int:
        self.calls["write"] += 1
        if self.write_errno is not None:
            raise OSError(self.write_errno, os.strerror(self.write_errno))
        if self.space is not None:
            if self.space == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = memoryview(data)[: self.space]
            self.space -= len(data)
        return super().write(handle, data)

    def open_read(self, path: str) -> Handle:
        self.calls["open_read"] += 1
        self.opened.append(os.path.basename(path))
        return super().open_read(path)

    def open_append(self, path: str, *, create: bool = False) -> Handle:
        self.calls["create" if create else "open_append"] += 1
        return super().open_append(path, create=create)

    def ftruncate(self, handle: Handle, length: int) -> None:
        self.calls["ftruncate"] += 1
        super().ftruncate(handle, length)

    def unlink(self, path: str) -> None:
        self.calls["unlink"] += 1
        super().unlink(path)


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "log"
