"""The record of log damage the verifier found while the daemon served.

The boot reads only the log's tail, so damage in older history, once found, must outlive a
restart some other way: the verifier writes `STATE_DIR/log-damaged` (atomically) when it makes the
daemon read-only, and a boot that finds the record walks the whole chain before it serves —
still damaged: it starts read-only (verdict `degraded`); whole again (an operator restored the
segment): it removes the record and serves writes. Only this file costs a boot a full walk.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from timelined.auditlog.atomic import write_file_atomic
from timelined.auditlog.fileops import OS_FILEOPS, FileOps
from timelined.ids import utc_now


class DamageRecord(msgspec.Struct, frozen=True, kw_only=True):
    seq: int | None
    reason: str
    segment: str | None
    found_at: str


def record_damage(
    path: Path, seq: int, reason: str, segment: str | None, fileops: FileOps = OS_FILEOPS
) -> None:
    """Keep the damage for the next boots (OSError: the caller logs it; the daemon goes on)."""
    record = DamageRecord(seq=seq, reason=reason, segment=segment, found_at=utc_now())
    write_file_atomic(path, msgspec.json.encode(record) + b"\n", fileops=fileops)


def recorded_damage(path: Path) -> DamageRecord | None:
    """The record, if there is one; an unreadable record still counts (as damage of unknown
    place): the boot then walks the chain, which is what decides."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(raw, type=DamageRecord)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return DamageRecord(
            seq=None, reason="an unreadable damage record", segment=None, found_at=""
        )


def clear_damage(path: Path, fileops: FileOps = OS_FILEOPS) -> None:
    """Remove the record, durably (the directory fsynced), as the marker is removed."""
    fileops.unlink(str(path))
    fileops.fsync_dir(str(path.parent))
