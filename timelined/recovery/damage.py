"""The record of log damage the verifier found while the daemon served.

The boot reads only the log's tail, so damage in older history, once found, must outlive a
restart some other way: the verifier writes `STATE_DIR/log-damaged` (atomically) when it makes the
daemon read-only, and a boot that finds the record walks the whole chain before it serves —
still damaged: it starts read-only (verdict `degraded`); whole again (an operator restored the
segment): it removes the record and serves writes. Only this file costs a boot a full walk.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgspec

from timelined.errors import LogDamaged
from timelined.ids import utc_now
from timelined.recovery.marker import write_atomically


class DamageRecord(msgspec.Struct, frozen=True, kw_only=True):
    seq: int | None
    reason: str
    segment: str | None
    found_at: str


def record_damage(path: Path, damage: LogDamaged) -> None:
    """Keep `damage` for the next boots (OSError: the caller logs it; the daemon goes on)."""
    params = damage.params
    record = DamageRecord(
        seq=params.get("seq"),
        reason=str(params.get("reason", damage.message)),
        segment=params.get("segment"),
        found_at=utc_now(),
    )
    write_atomically(path, msgspec.json.encode(record) + b"\n")


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


def clear_damage(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
