"""Checking the chain, read-only: the boot's tail scan and the verifier's full walk.

Torn tail vs damage (docs/log-format.md, "Torn tail and damage"). Let B be the first line that
breaks the chain, in log order. Everything from B's first byte to the end of the log is a
**torn tail** — cut at boot and kept in quarantine (repair.py) — if and only if all of these hold:

1. B is in the last segment;
2. B is *not self-consistent*: it lacks its newline, its framing is broken, or its bytes do not
   hash to its `hash` member. (A line that hashes correctly was written whole; if its seq, link
   or data is wrong, no crash explains it.);
3. no complete, self-consistent line follows B: every later line of the segment is also
   incomplete, broken or mis-hashed — unless B holds a *crash hole*: a run of NUL bytes that
   starts at B's first byte or at a 512-byte boundary of the file and ends at one. The writer
   never writes a NUL (JSON escapes it); such a run is an unsynced append whose later sectors
   reached the disk before an earlier one (reordered writeback reads the missing one as zeros),
   so B and every line after it belong to that unsynced write and are cut with it.

Anything else is **damage**: it is reported with the first bad seq and never repaired. A crash
can only produce a torn tail: the writer fsyncs a segment before starting the next one, and the
bytes of an unfinished append are the last bytes of the last segment.

**Reserved space**: the writer grows the last segment ahead of its records (writer.py), so a
run of NUL bytes from some offset to the end of the last segment is space it had reserved, not
a record: when B is all NULs to the end it is a `ReservedTail` (released at boot, never
quarantined, never damage); when a torn tail ends in such a run, the run is not part of the
torn bytes kept in quarantine (`TornTail.reserved`), and both are cut at B. In any segment but
the last, a NUL run is what it always was: damage.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, NoReturn

from timelined.auditlog.fileops import OS_FILEOPS, FileOps, Handle
from timelined.auditlog.reader import content_end, iter_lines, read_last_line
from timelined.auditlog.record import (
    GENESIS_PREV,
    RecordError,
    check_frame,
    decode_framed,
    peek_seq,
)
from timelined.auditlog.segments import Segment, list_segments, segment_index_for
from timelined.auditlog.writer import LogHead
from timelined.errors import LogDamaged

DamageKind = Literal[
    "unparsable",  # framing or JSON broken
    "incomplete line",  # a line without its newline before the end of the log
    "hash mismatch",  # the line's bytes do not hash to its hash member
    "broken link",  # prev is not the previous record's hash
    "gap",  # a seq is missing: the line holds a later seq than expected
    "duplicate",  # a seq repeats or goes back
    "missing segment",  # a segment starts past the expected seq: records before it are missing
    "extra segment",  # an empty segment before the last, or one starting before the expected seq
    "segment name mismatch",  # a segment's name is not the seq of its first record
    "bad data",  # the data does not fit its event type (deep checks only)
    "truncated",  # the log ends before the seq it was expected to reach
]
Anchor = Literal["genesis", "ok", "mismatch", "missing", "unchecked"]

_GENESIS = GENESIS_PREV.encode()
_PROGRESS_EVERY = 1 << 16
_LINES_BATCH = 4096  # the good lines handed to a walk's `on_lines` at a time (~3.5 MB at 1M)
_SECTOR = 512  # the unit a disk writes atomically (at best): the granularity of a crash hole
_NUL_RUN = re.compile(rb"\x00+")
_SELF_INVALID: dict[str, tuple[DamageKind, str]] = {
    "incomplete line": ("incomplete line", "the line has no newline"),
    "framing": ("unparsable", "the line is not framed as a record"),
    "hash mismatch": ("hash mismatch", "the line's bytes do not hash to its hash member"),
}
_SELF_VALID: dict[str, DamageKind] = {
    "framing": "unparsable",
    "unparsable": "unparsable",
    "bad field": "unparsable",
    "bad data": "bad data",
}


@dataclass(frozen=True, slots=True)
class Damage:
    """The first place the chain breaks.

    `seq` is the first bad seq: the seq expected where the chain broke (for a gap, the first
    missing one), or for a duplicate the seq that appears again; `found_seq` is what the line
    there claims when it could be read.
    """

    seq: int
    kind: DamageKind
    segment: str | None
    offset: int | None
    detail: str
    found_seq: int | None = None

    def error(self) -> LogDamaged:
        return LogDamaged(self.seq, f"{self.kind}: {self.detail}", self.segment)


@dataclass(frozen=True, slots=True)
class TornTail:
    """The bytes from `offset` to the end of the last segment, which the boot cuts."""

    segment: str
    offset: int
    length: int
    data: bytes
    seq: int  # the seq that was being written there
    reason: str
    reserved: int = 0  # NUL bytes after `data` to the end: reserved space, cut but not kept


@dataclass(frozen=True, slots=True)
class ReservedTail:
    """A run of NUL bytes from `offset` to the end of the last segment: space the writer had
    reserved ahead of its records (a crash, or a live writer's file), released at boot."""

    segment: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class TailScan:
    """What the boot learns from the tail of the log.

    `segment`/`end_offset`: the last segment and where its good records end (where the writer
    appends once a torn tail is cut). `anchor`: whether the record at `after_seq` was found and
    carried the expected hash. With `damage`, the log must not be written.
    """

    last_seq: int
    last_hash: str
    segment: str | None
    end_offset: int
    anchor: Anchor
    anchor_hash: str | None
    lines_scanned: int
    segments_scanned: int
    bytes_scanned: int
    torn: TornTail | None
    damage: Damage | None
    reserved: ReservedTail | None = None

    @property
    def head(self) -> LogHead:
        return LogHead(self.last_seq, self.last_hash, self.end_offset)


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The result of a full walk: how far the chain is good and the first problem."""

    records: int
    segments: int
    bytes_scanned: int
    head_seq: int
    head_hash: str
    damage: Damage | None
    torn: TornTail | None
    reserved: ReservedTail | None = None

    @property
    def ok(self) -> bool:
        return self.damage is None


class _Stop(Exception):
    """The walk is finished (damage found, torn tail found, or upto_seq reached)."""


class _Chain:
    """Walks lines from a starting point to the end of the log, checking every link."""

    def __init__(
        self,
        fops: FileOps,
        segments: list[Segment],
        *,
        deep: bool,
        upto_seq: int | None = None,
        anchor_seq: int = 0,
        progress: Callable[[int, int], None] | None = None,
        on_lines: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        self.fops = fops
        self.segments = segments
        self.deep = deep
        self.upto_seq = upto_seq
        self.anchor_seq = anchor_seq
        self.progress = progress
        self.on_lines = on_lines
        self.good: list[bytes] = []  # good lines not yet handed to on_lines
        self.seq = 0  # last good seq
        self.hash = _GENESIS  # its hash
        self.segment: str | None = None  # the segment being walked
        self.end_offset = 0  # where its last good line ends
        self.lines = 0
        self.bytes = 0
        self.segments_walked = 0
        self.anchor_hash: bytes | None = None
        self.damage: Damage | None = None
        self.torn: TornTail | None = None
        self.reserved: ReservedTail | None = None

    def run(self, index: int, offset: int, expect: int, prev: bytes | None) -> None:
        try:
            for k in range(index, len(self.segments)):
                expect, prev = self._segment(k, offset if k == index else 0, expect, prev)
        except _Stop:
            pass
        if self.on_lines is not None and self.good:
            self.on_lines(self.good)
            self.good.clear()

    def _segment(
        self, k: int, offset: int, expect: int, prev: bytes | None
    ) -> tuple[int, bytes | None]:
        seg = self.segments[k]
        last = k == len(self.segments) - 1
        self.segments_walked += 1
        self.segment, self.end_offset = seg.name, offset
        at_start = offset == 0
        deep, upto, anchor, progress = self.deep, self.upto_seq, self.anchor_seq, self.progress
        on_lines, good = self.on_lines, self.good
        handle = self.fops.open_read(seg.path)
        try:
            # The last segment may end in reserved space: not held (`_bad_line` reads it).
            lines = iter_lines(self.fops, handle, offset, skip_nul_chunks=last)
            for off, content, complete in lines:
                self.lines += 1
                self.bytes += len(content) + complete
                if not complete:
                    self.bytes += _skipped(self.fops, handle, off, content)
                    self._bad_line(
                        seg, handle, last, lines, off, content, expect, "incomplete line"
                    )
                try:
                    frame = check_frame(content)
                except RecordError as exc:
                    if exc.kind not in _SELF_INVALID:  # hashes correctly: damage, never torn
                        if at_start:
                            self._segment_start(seg, off, -1, expect)
                        self._damage(expect, _SELF_VALID[exc.kind], seg, off, exc.detail)
                    self._bad_line(seg, handle, last, lines, off, content, expect, exc.kind)
                seq, link, digest = frame
                if at_start:
                    self._segment_start(seg, off, seq, expect)
                    at_start = False
                if seq != expect:
                    if seq > expect:
                        self._damage(expect, "gap", seg, off, f"expected seq {expect}", seq)
                    self._damage(seq, "duplicate", seg, off, f"seq {seq} again", seq)
                if prev is not None and link != prev:
                    self._damage(seq, "broken link", seg, off, "prev is not the last hash", seq)
                if deep:
                    try:
                        decode_framed(content, frame)
                    except RecordError as exc:
                        self._damage(seq, _SELF_VALID[exc.kind], seg, off, exc.detail, seq)
                if on_lines is not None:
                    good.append(content)
                    if len(good) >= _LINES_BATCH:
                        on_lines(good)
                        good.clear()
                prev = digest
                self.seq, self.hash = seq, digest
                self.end_offset = off + len(content) + 1
                if seq == anchor:
                    self.anchor_hash = digest
                if seq == upto:
                    raise _Stop
                expect = seq + 1
                if progress is not None and not self.lines % _PROGRESS_EVERY:
                    progress(seq, self.bytes)
        finally:
            self.fops.close(handle)
        if at_start:  # the segment is empty
            self._segment_start(seg, 0, -1, expect)
            if not last:
                self._damage(expect, "extra segment", seg, 0, "an empty segment before the last")
        return expect, prev

    def _segment_start(self, seg: Segment, off: int, seq: int, expect: int) -> None:
        """At a segment's first line (seq -1: none or unreadable), its name must be `expect`."""
        if seg.first_seq == expect:
            return
        found = seq if seq > 0 else None
        if seq == expect:
            detail = f"segment {seg.name} starts with seq {expect}"
            self._damage(expect, "segment name mismatch", seg, off, detail, found)
        if seg.first_seq > expect:
            detail = (
                f"segment {seg.name} starts past seq {expect}: records {expect}.."
                f"{seg.first_seq - 1} are missing (a deleted segment, or one cut short)"
            )
            self._damage(expect, "missing segment", seg, off, detail, found)
        detail = f"segment {seg.name} starts before seq {expect}, which the log had reached"
        self._damage(seg.first_seq, "extra segment", seg, off, detail, found)

    def _bad_line(
        self,
        seg: Segment,
        handle: Handle,
        last: bool,
        lines: Iterator[tuple[int, bytes, bool]],
        off: int,
        bad: bytes,
        expect: int,
        why: str,
    ) -> NoReturn:
        """A line that is not self-consistent: the start of a torn tail, or damage."""
        kind, reason = _SELF_INVALID[why]
        if off == 0:
            self._segment_start(seg, off, -1, expect)
        if not last:
            self._damage(expect, kind, seg, off, reason)
        hole = _crash_hole(bad, off)
        for later, content, complete in lines:
            self.lines += 1
            self.bytes += len(content) + complete
            if not complete:
                self.bytes += _skipped(self.fops, handle, later, content)
                continue
            try:
                check_frame(content)
            except RecordError as exc:
                if exc.kind in _SELF_INVALID:
                    continue  # a line that hashes correctly is self-consistent, whatever its seq
            if hole:
                continue  # written by the same unsynced append as the hole: never acknowledged
            detail = f"{reason}, and a good line follows at offset {later}"
            self._damage(expect, kind, seg, off, detail)
        size = self.fops.fstat_size(handle)
        end = content_end(self.fops, handle, off, size)
        kept = self.fops.pread(handle, end - off, off) if end > off else b""
        nuls = size - end
        if kept:
            self.torn = TornTail(seg.name, off, len(kept), kept, expect, reason, nuls)
        else:
            self.reserved = ReservedTail(seg.name, off, nuls)
        raise _Stop

    def _damage(
        self,
        seq: int,
        kind: DamageKind,
        seg: Segment,
        off: int | None,
        detail: str,
        found: int | None = None,
    ) -> NoReturn:
        self.damage = Damage(seq, kind, seg.name, off, detail, found)
        raise _Stop


def _skipped(fops: FileOps, handle: Handle, offset: int, content: bytes) -> int:
    """The NUL bytes `iter_lines(skip_nul_chunks=True)` left out of the incomplete last line
    at `offset`: they were read, so they count as scanned (to the file's size now)."""
    return max(0, fops.fstat_size(handle) - offset - len(content))


def _crash_hole(line: bytes, offset: int) -> bool:
    """Whether `line` (at file `offset`) holds a run of NULs bounded by sector boundaries.

    Such a run is what a power cut leaves when a later sector of an unsynced append reached the
    disk and an earlier one did not: the file grew, the missing sector reads as zeros.
    """
    for run in _NUL_RUN.finditer(line):  # each whole run, found in C: a run may be MiBs long
        i, j = run.span()
        if (i == 0 or (offset + i) % _SECTOR == 0) and (offset + j) % _SECTOR == 0:
            return True
    return False


def _as_text(digest: bytes | None) -> str | None:
    return digest.decode() if digest is not None else None


def scan_tail(
    log_dir: str | os.PathLike[str],
    after_seq: int = 0,
    expected_hash: str | None = None,
    fileops: FileOps | None = None,
) -> TailScan:
    """Check the log from `after_seq` (the state's last seq) to its end, for the boot.

    Reads from the segment holding after_seq+1 only (plus, when that segment starts exactly at
    after_seq+1, the last line of the one before, to check the anchor's hash). Records past the
    anchor are fully decoded, so the roll-forward cannot meet a record it cannot apply.
    """
    fops = fileops or OS_FILEOPS
    segments = list_segments(log_dir, fops)
    if not segments:
        return TailScan(
            0,
            GENESIS_PREV,
            None,
            0,
            "genesis" if after_seq == 0 else "missing",
            None,
            0,
            0,
            0,
            None,
            None,
        )
    chain = _Chain(fops, segments, deep=True, anchor_seq=after_seq)
    if after_seq == 0:
        chain.run(0, 0, 1, _GENESIS)
    else:
        start = _locate_anchor(chain, after_seq)
        if start is not None:
            index, offset, digest = start
            chain.seq, chain.hash, chain.anchor_hash = after_seq, digest, digest
            chain.run(index, offset, after_seq + 1, digest)
        else:  # no clean anchor: check the whole segment the tail starts in
            index = max(segment_index_for(segments, after_seq + 1), 0)
            expect, prev = _link_into(fops, segments, index, chain)
            chain.run(index, 0, expect, prev)
    if after_seq == 0:
        anchor: Anchor = "genesis"
    elif chain.anchor_hash is None:
        anchor = "missing"
    elif expected_hash is None:
        anchor = "unchecked"
    else:
        anchor = "ok" if chain.anchor_hash == expected_hash.encode() else "mismatch"
    return TailScan(
        last_seq=chain.seq,
        last_hash=chain.hash.decode(),
        segment=chain.segment,
        end_offset=chain.end_offset,
        anchor=anchor,
        anchor_hash=_as_text(chain.anchor_hash),
        lines_scanned=chain.lines,
        segments_scanned=chain.segments_walked,
        bytes_scanned=chain.bytes,
        torn=chain.torn,
        damage=chain.damage,
        reserved=chain.reserved,
    )


def _locate_anchor(chain: _Chain, after_seq: int) -> tuple[int, int, bytes] | None:
    """(segment index, offset after the anchor line, anchor hash), found by seq prefix only.

    A line before the anchor holding a NUL byte is a crash hole (see the module docstring): the
    state got ahead of the last fsync (log.fsync other than "always") and a power cut kept later
    sectors of that unsynced write but not this one. Then there is no clean anchor, and the whole
    segment is checked: the hole and everything after it is a torn tail, the state is rebuilt.
    """
    segments, fops = chain.segments, chain.fops
    index = segment_index_for(segments, after_seq + 1)
    if index < 0:
        return None
    seg = segments[index]
    if seg.first_seq == after_seq + 1:
        if index == 0:
            return None
        found = read_last_line(fops, segments[index - 1].path)
        if found is None:
            return None
        chain.lines += 1
        try:
            seq, _, digest = check_frame(found[1])
        except RecordError:
            return None
        return (index, 0, digest) if seq == after_seq else None
    handle = fops.open_read(seg.path)
    try:
        for off, content, complete in iter_lines(fops, handle, skip_nul_chunks=True):
            chain.lines += 1
            chain.bytes += len(content) + complete
            if not complete:
                chain.bytes += _skipped(fops, handle, off, content)
            claimed = peek_seq(content)
            if not complete or claimed is None or claimed > after_seq or b"\0" in content:
                return None
            if claimed == after_seq:
                try:
                    _, _, digest = check_frame(content)
                except RecordError:
                    return None
                return index, off + len(content) + 1, digest
    finally:
        fops.close(handle)
    return None


def _link_into(
    fops: FileOps, segments: list[Segment], index: int, chain: _Chain
) -> tuple[int, bytes | None]:
    """The seq and prev expected at the start of segments[index], from the segment before."""
    if index == 0:
        return 1, _GENESIS
    found = read_last_line(fops, segments[index - 1].path)
    if found is not None:
        try:
            seq, _, digest = check_frame(found[1])
        except RecordError:
            pass
        else:
            chain.seq, chain.hash = seq, digest
            if seq == chain.anchor_seq:
                chain.anchor_hash = digest
            return seq + 1, digest
    return segments[index].first_seq, None


def walk_chain(
    log_dir: str | os.PathLike[str],
    progress: Callable[[int, int], None] | None = None,
    *,
    upto_seq: int | None = None,
    deep: bool = False,
    fileops: FileOps | None = None,
    on_lines: Callable[[list[bytes]], None] | None = None,
) -> ChainReport:
    """Check the whole chain: every hash, link, seq and segment name, streaming.

    `deep` also decodes every record's data against its event type (slower). With `upto_seq`
    the walk stops there, and a log that ends before it is damage ("truncated"): the verifier
    passes the state's last seq, so a live writer's newer lines are not looked at.
    `progress(seq, bytes)` is called every 65536 lines. `on_lines(lines)` is given the lines
    the walk found good (without their newlines), from seq 1 on, in order, a few thousand at a
    time (the list is reused: copy what must outlive the call); the lines of a torn tail and
    from the first damage on are never given. The verifier's tree check reads the log this way
    instead of a second time.
    """
    fops = fileops or OS_FILEOPS
    segments = list_segments(log_dir, fops)
    chain = _Chain(
        fops, segments, deep=deep, upto_seq=upto_seq, progress=progress, on_lines=on_lines
    )
    if segments:
        chain.run(0, 0, 1, _GENESIS)
    damage = chain.damage
    if damage is None and upto_seq is not None and chain.seq < upto_seq:
        damage = Damage(
            chain.seq + 1,
            "truncated",
            segments[-1].name if segments else None,
            chain.end_offset if segments else None,
            f"the log ends at seq {chain.seq}, before seq {upto_seq}",
        )
    return ChainReport(
        records=chain.seq,
        segments=chain.segments_walked,
        bytes_scanned=chain.bytes,
        head_seq=chain.seq,
        head_hash=chain.hash.decode(),
        damage=damage,
        torn=chain.torn,
        reserved=chain.reserved,
    )
