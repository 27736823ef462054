"""The clean-shutdown marker: written last at a clean stop, read and removed first at boot.

Its presence says "the daemon stopped cleanly and the log ended here": if its seq, hash and log
size match the log's tail, the boot skips every scan. It is written atomically (auditlog/atomic:
temporary file, fsync, rename, fsync of the directory) so that a power cut leaves either no
marker or a whole one; it is removed, with the directory fsynced, before the daemon writes
anything else, so that a crash after boot can never be mistaken for a clean stop.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from timelined import __version__
from timelined.auditlog.atomic import write_file_atomic
from timelined.auditlog.fileops import OS_FILEOPS, FileOps
from timelined.events import SCHEMA_VERSION
from timelined.ids import utc_now


class Marker(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    last_seq: int
    last_hash: str
    log_bytes: int  # size of the last segment, to see that nothing was appended after the stop
    segment: str  # the last segment's file name
    version: str
    event_schema: int
    written_at: str


def make_marker(last_seq: int, last_hash: str, segment: str, log_bytes: int) -> Marker:
    return Marker(
        last_seq=last_seq,
        last_hash=last_hash,
        log_bytes=log_bytes,
        segment=segment,
        version=__version__,
        event_schema=SCHEMA_VERSION,
        written_at=utc_now(),
    )


def write_marker(path: Path, marker: Marker, fileops: FileOps = OS_FILEOPS) -> None:
    write_file_atomic(
        path, msgspec.json.encode(marker) + b"\n", fileops=fileops, tmp=_marker_tmp(path)
    )


def _marker_tmp(path: Path) -> Path:
    """A fixed temporary name, so that the boot can remove one a stop left mid-write."""
    return path.with_name(path.name + ".tmp")


class MarkerRead(msgspec.Struct, frozen=True):
    """What the boot found: the marker, or why there was none usable."""

    marker: Marker | None
    problem: str | None  # "absent", or why a present file was not a valid marker


def take_marker(path: Path, fileops: FileOps = OS_FILEOPS) -> MarkerRead:
    """Read and remove the marker (directory fsynced), before anything else is written."""
    ops = fileops
    tmp = _marker_tmp(path)
    stale_tmp = tmp.exists()  # a stop that died mid-write committed no marker
    if stale_tmp:
        ops.unlink(str(tmp))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if stale_tmp:
            ops.fsync_dir(str(path.parent))
        return MarkerRead(None, "absent")
    try:
        marker: Marker | None = msgspec.json.decode(raw, type=Marker)
        problem = None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        marker, problem = None, f"unreadable marker: {exc}"
    ops.unlink(str(path))
    ops.fsync_dir(str(path.parent))
    return MarkerRead(marker, problem)


def mark_clean(
    path: Path,
    head_seq: int,
    head_hash: str,
    segment_path: str | None,
    size: int,
    fileops: FileOps = OS_FILEOPS,
) -> Marker:
    """Write the marker for a log that ends at `head_seq` in `segment_path` of `size` bytes."""
    name = Path(segment_path).name if segment_path else ""
    marker = make_marker(head_seq, head_hash, name, size)
    write_marker(path, marker, fileops)
    return marker
