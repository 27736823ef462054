"""Helpers for the audit log tests: sample events and logs written by the real writer (the
fault injector is tests/faults/faultops.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "log"
