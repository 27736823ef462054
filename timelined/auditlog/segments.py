"""Segment files: `<first seq, zero-padded to 20 digits>.jsonl` in the log directory."""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass

from timelined.auditlog.fileops import OS_FILEOPS, FileOps

SEGMENT_DIGITS = 20
SEGMENT_SUFFIX = ".jsonl"


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment file: its name, the seq of its first record, its full path."""

    first_seq: int
    name: str
    path: str


def segment_name(first_seq: int) -> str:
    if not 1 <= first_seq < 10**SEGMENT_DIGITS:
        raise ValueError(f"segment first seq out of range: {first_seq}")
    return f"{first_seq:0{SEGMENT_DIGITS}d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The first seq a segment file name declares, or None for any other file."""
    if len(name) != SEGMENT_DIGITS + len(SEGMENT_SUFFIX) or not name.endswith(SEGMENT_SUFFIX):
        return None
    digits = name[:SEGMENT_DIGITS]
    if not (digits.isascii() and digits.isdigit()):
        return None
    first = int(digits)
    return first if first >= 1 else None


def list_segments(log_dir: str | os.PathLike[str], fileops: FileOps | None = None) -> list[Segment]:
    """The log's segments in order; other files (temporary, quarantine, notes) are ignored.

    A missing log directory is an empty log.
    """
    fops = fileops or OS_FILEOPS
    base = os.fspath(log_dir)
    try:
        names = fops.listdir(base)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        first = parse_segment_name(name)
        if first is not None:
            found.append(Segment(first, name, os.path.join(base, name)))  # noqa: PTH118
    found.sort(key=lambda seg: seg.first_seq)
    return found


def segment_index_for(segments: list[Segment], seq: int) -> int:
    """Index of the segment that would hold `seq` (the last one starting at or before it), or -1."""
    return bisect.bisect_right([seg.first_seq for seg in segments], seq) - 1
