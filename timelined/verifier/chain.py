"""The chain check: auditlog.walk_chain over every segment, as a verifier result."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from timelined.api.verify import ChainDamage, ChainResult, ChainTorn
from timelined.auditlog.scan import Damage, walk_chain


def check_chain(
    log_dir: Path,
    *,
    upto_seq: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_lines: Callable[[list[bytes]], None] | None = None,
) -> ChainResult:
    """Walk the chain to `upto_seq` (or the log's end); the result names the first bad seq.

    `progress(seq, bytes)` is called every 65536 lines; `on_lines` is given the good lines
    (walk_chain's: the tree check's leaves).
    """
    started = time.perf_counter()
    walked = walk_chain(log_dir, progress, upto_seq=upto_seq, on_lines=on_lines)
    damage = walked.damage
    torn = walked.torn
    return ChainResult(
        ok=damage is None,
        upto_seq=upto_seq,
        records=walked.records,
        segments=walked.segments,
        bytes_scanned=walked.bytes_scanned,
        head_seq=walked.head_seq,
        head_hash=walked.head_hash,
        seconds=round(time.perf_counter() - started, 6),
        damage=None if damage is None else chain_damage(damage),
        torn=None
        if torn is None
        else ChainTorn(
            segment=torn.segment,
            offset=torn.offset,
            length=torn.length,
            seq=torn.seq,
            reason=torn.reason,
        ),
    )


def chain_damage(damage: Damage) -> ChainDamage:
    """The log's damage (as a walk or a tail scan names it) in a verification report."""
    return ChainDamage(
        seq=damage.seq,
        kind=damage.kind,
        segment=damage.segment,
        offset=damage.offset,
        detail=damage.detail,
        found_seq=damage.found_seq,
    )
