"""The chain check over PostgreSQL's log table, as a verifier result.

The file walk's checks (auditlog/scan.py), row by row in seq order and in bounded pages: the
same `check_frame` (framing, seq, the line's own hash), the seq that must follow, the `prev`
that must be the hash before, reported with the same damage kinds. What a table adds: a row's
`seq` and `hash` columns must be its line's own (the daemons take the chain's head from them).
There is no torn tail: a row commits with its batch's transaction, or not at all. `segment` is
None in a damage: the table has no files; the seq names the row.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from timelined.api.verify import ChainDamage, ChainResult
from timelined.auditlog.record import GENESIS_PREV, RecordError, check_frame
from timelined.state.dbapi import DbConn
from timelined.verifier.pgrows import log_rows

_PROGRESS_EVERY = 1 << 16
# A line that fails check_frame is damage here whatever the reason (nothing is torn in a
# table): the kinds are those the file walk gives the same line.
_KINDS = {"framing": "unparsable", "hash mismatch": "hash mismatch", "bad field": "unparsable"}


def check_table_chain(
    conn: DbConn,
    *,
    upto_seq: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ChainResult:
    """Walk the log table to `upto_seq` (or its last row); the result names the first bad seq.

    `progress(seq, bytes)` is called every 65536 rows.
    """
    started = time.perf_counter()
    expect, prev = 1, GENESIS_PREV
    records = scanned = 0
    damage: ChainDamage | None = None
    for seq, digest, line in log_rows(conn, upto_seq=upto_seq):
        scanned += len(line)
        damage = _row_damage(seq, digest, line, expect, prev)
        if damage is not None:
            break
        records += 1
        expect, prev = seq + 1, digest
        if progress is not None and not records % _PROGRESS_EVERY:
            progress(seq, scanned)
    if damage is None and upto_seq is not None and expect - 1 < upto_seq:
        damage = ChainDamage(
            seq=expect,
            kind="truncated",
            segment=None,
            offset=None,
            detail=f"the log table ends at seq {expect - 1}, before seq {upto_seq}",
        )
    return ChainResult(
        ok=damage is None,
        upto_seq=upto_seq,
        records=records,
        segments=0,
        bytes_scanned=scanned,
        head_seq=expect - 1,
        head_hash=prev,
        seconds=round(time.perf_counter() - started, 6),
        damage=damage,
    )


def _row_damage(seq: int, digest: str, line: bytes, expect: int, prev: str) -> ChainDamage | None:
    """What is wrong with the row at `seq` (expected: `expect`, linked to `prev`), if anything."""

    def damage(kind: str, at: int, detail: str, found: int | None = None) -> ChainDamage:
        return ChainDamage(
            seq=at,
            kind=kind,
            segment=None,
            offset=None,
            detail=f"log table row {seq}: {detail}",
            found_seq=found,
        )

    if seq > expect:
        return damage("gap", expect, f"expected seq {expect}", seq)
    if line[-1:] != b"\n" or b"\n" in line[:-1]:
        return damage("unparsable", expect, "the line is not one line ending in a newline")
    try:
        line_seq, link, line_hash = check_frame(line[:-1])
    except RecordError as exc:
        return damage(_KINDS.get(exc.kind, "unparsable"), expect, exc.detail)
    if line_seq != seq:
        kind = "gap" if line_seq > expect else "duplicate"
        return damage(
            kind, expect, f"the row's seq column is {seq}, its line's {line_seq}", line_seq
        )
    if link.decode() != prev:
        return damage("broken link", seq, "prev is not the last hash", seq)
    if line_hash.decode() != digest:
        return damage(
            "hash mismatch",
            seq,
            f"the row's hash column is {digest[:12]}…, its line's {line_hash.decode()[:12]}…",
            seq,
        )
    return None
