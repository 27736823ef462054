"""The boot's tail scan: torn tails at every byte, damage before the tail, the cut, anchors."""

from __future__ import annotations

import errno
import tracemalloc
from pathlib import Path

import pytest

from tests.faults.faultops import FaultOps
from timelined.auditlog.reader import read_records
from timelined.auditlog.repair import cut_torn_tail, release_reserved
from timelined.auditlog.scan import ReservedTail, scan_tail, walk_chain
from timelined.auditlog.segments import list_segments
from timelined.auditlog.writer import LogWriter
from timelined.errors import FatalStorageError, LogDamaged

from .conftest import make_lines, segment_files, write_log


def test_torn_tail_at_every_byte_of_the_last_three_records(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    items = write_log(log_dir, 14, segment_bytes=3500, batch=2)
    last = segment_files(log_dir)[-1]
    full = last.read_bytes()
    first_in_last = list_segments(log_dir)[-1].first_seq
    ends = []  # (seq, end offset in the last segment) of every record in it
    pos = 0
    for record, line in items[first_in_last - 1 :]:
        pos += len(line)
        ends.append((record.seq, pos))
    assert len(ends) >= 3 and pos == len(full)
    start = ends[-4][1] if len(ends) > 3 else 0
    anchor_seq = first_in_last - 1  # the anchor is the last line of the previous segment
    anchor_hash = items[anchor_seq - 1][0].hash
    for cut in range(start, len(full)):
        last.write_bytes(full[:cut])
        good = [(seq, end) for seq, end in ends if end <= cut]
        last_seq, end = good[-1] if good else (first_in_last - 1, 0)
        for scan in (scan_tail(log_dir), scan_tail(log_dir, anchor_seq, anchor_hash)):
            assert scan.damage is None, (cut, scan.damage)
            assert (scan.last_seq, scan.end_offset) == (last_seq, end), cut
            assert scan.last_hash == items[last_seq - 1][0].hash
            assert scan.segment == last.name
            if end == cut:
                assert scan.torn is None
            else:
                assert scan.torn is not None
                assert (scan.torn.offset, scan.torn.data) == (end, full[end:cut])
                assert scan.torn.length == cut - end and scan.torn.seq == last_seq + 1
        assert scan.anchor == "ok"


@pytest.mark.parametrize("cut_back", [1, 37, 200, "line", "two lines"])
def test_cut_quarantines_the_torn_bytes_whole(tmp_path: Path, cut_back: int | str) -> None:
    log_dir = tmp_path / "log"
    items = write_log(log_dir, 9, segment_bytes=3000)
    path = segment_files(log_dir)[-1]
    full = path.read_bytes()
    # A crash mid-batch: the last one or two lines partly written.
    if cut_back == "line":
        keep = len(full) - len(items[-1][1]) + 1
    elif cut_back == "two lines":
        keep = len(full) - len(items[-1][1]) - len(items[-2][1]) // 2
    else:
        assert isinstance(cut_back, int)
        keep = len(full) - cut_back
    path.write_bytes(full[:keep])
    scan = scan_tail(log_dir)
    assert scan.torn is not None and scan.damage is None
    ops = FaultOps()
    kept = cut_torn_tail(log_dir, scan.torn, fileops=ops)
    assert kept == str(tmp_path / "quarantine" / f"{path.name}.{scan.torn.offset}.torn")
    assert Path(kept).read_bytes() == full[scan.torn.offset : keep]
    assert path.read_bytes() == full[: scan.torn.offset]
    assert not list((tmp_path / "quarantine").glob("*.tmp"))
    assert ops.calls["fsync"] == 2 and ops.calls["fsync_dir"] == 2  # copy, dir, parent; segment
    again = scan_tail(log_dir)
    assert again.torn is None and again.damage is None and again.last_seq == scan.last_seq
    # The writer continues exactly where the good records end.
    more = make_lines(3, start=scan.last_seq + 1, prev=scan.last_hash)
    writer = LogWriter(log_dir, again.head)
    writer.write_batch(b"".join(line for _, line in more), more[0][0].seq, more[-1][0].seq, "h")
    writer.close()
    assert walk_chain(log_dir).ok and walk_chain(log_dir).head_seq == scan.last_seq + 3


def test_cut_refuses_a_segment_that_changed_and_fails_hard_on_fsync(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    write_log(log_dir, 5)
    path = segment_files(log_dir)[-1]
    path.write_bytes(path.read_bytes()[:-10])
    torn = scan_tail(log_dir).torn
    assert torn is not None
    with path.open("ab") as f:
        f.write(b"more")
    with pytest.raises(LogDamaged):
        cut_torn_tail(log_dir, torn)
    path.write_bytes(path.read_bytes()[:-4])
    ops = FaultOps()
    ops.arm("sync")
    with pytest.raises(FatalStorageError) as caught:
        cut_torn_tail(log_dir, torn, fileops=ops)
    assert caught.value.params["errno"] == errno.EIO
    assert path.stat().st_size == torn.offset + torn.length  # not cut before the copy is safe


@pytest.mark.parametrize(
    "garbage",
    [b"\x00" * 4096 + b"\n", b'{"seq":99}\n', b"\n", b"junk\njunk"],
)
def test_garbage_after_the_last_record_is_torn(log_dir: Path, garbage: bytes) -> None:
    items = write_log(log_dir, 6)
    with segment_files(log_dir)[-1].open("ab") as f:
        f.write(garbage)
    scan = scan_tail(log_dir)
    assert scan.damage is None and scan.last_seq == 6
    assert scan.torn is not None and scan.torn.data == garbage
    assert scan.reserved is None and scan.torn.reserved == 0
    assert scan.end_offset == sum(len(line) for _, line in items)


def test_nuls_alone_after_the_last_record_are_reserved_space_not_torn(log_dir: Path) -> None:
    """Space the writer reserved (posix_fallocate) reads as NULs: released, never quarantined."""
    items = write_log(log_dir, 6)
    end = sum(len(line) for _, line in items)
    with segment_files(log_dir)[-1].open("ab") as f:
        f.write(b"\x00" * 300)
    for found in (scan_tail(log_dir), walk_chain(log_dir)):
        assert found.damage is None and found.torn is None
        assert found.reserved == ReservedTail(segment_files(log_dir)[-1].name, end, 300)
    release_reserved(log_dir, scan_tail(log_dir).reserved)  # type: ignore[arg-type]
    assert segment_files(log_dir)[-1].stat().st_size == end
    assert not (log_dir.parent / "quarantine").exists()


def test_reserved_space_that_changed_after_the_scan_is_not_cut(log_dir: Path) -> None:
    """A segment that grew after the scan is refused by name, without a seq, and left as is."""
    write_log(log_dir, 6)
    last = segment_files(log_dir)[-1]
    with last.open("ab") as f:
        f.write(b"\x00" * 300)
    reserved = scan_tail(log_dir).reserved
    assert reserved is not None
    with last.open("ab") as f:
        f.write(b"\x00" * 10)
    size = last.stat().st_size
    with pytest.raises(LogDamaged) as caught:
        release_reserved(log_dir, reserved)
    assert caught.value.params["seq"] is None and caught.value.params["segment"] == last.name
    assert f"({size} bytes, {size - 10} when scanned)" in str(caught.value)
    assert "at seq" not in str(caught.value)
    assert last.stat().st_size == size


def test_a_torn_line_then_reserved_space_keeps_only_the_torn_bytes(log_dir: Path) -> None:
    items = write_log(log_dir, 6)
    end = sum(len(line) for _, line in items)
    torn_bytes = items[2][1][:100]  # the start of a record, cut
    with segment_files(log_dir)[-1].open("ab") as f:
        f.write(torn_bytes + b"\x00" * 5000)
    scan = scan_tail(log_dir)
    assert scan.damage is None and scan.reserved is None and scan.torn is not None
    assert (scan.torn.offset, scan.torn.data, scan.torn.reserved) == (end, torn_bytes, 5000)
    kept = cut_torn_tail(log_dir, scan.torn)
    assert Path(kept).read_bytes() == torn_bytes
    assert segment_files(log_dir)[-1].stat().st_size == end


@pytest.mark.parametrize("torn", [False, True], ids=["reserved alone", "after a torn line"])
def test_reserved_space_is_scanned_a_chunk_at_a_time(log_dir: Path, torn: bool) -> None:
    """16 MiB of reserved space (the most `log.reserve_bytes` allows) after the last record,
    alone or after a torn line: the boot's tail scan and the verifier's chain walk find what
    they found before without holding it (a boot after kill -9 once held it twice)."""
    items = write_log(log_dir, 6)
    end = sum(len(line) for _, line in items)
    torn_bytes = items[2][1][:100] if torn else b""
    nuls = 16 * 1024 * 1024
    last = segment_files(log_dir)[-1]
    with last.open("ab") as f:
        f.write(torn_bytes)
        f.truncate(end + len(torn_bytes) + nuls)  # reads as NULs, as fallocated space does
    for walk in (scan_tail, walk_chain):
        tracemalloc.start()
        try:
            found = walk(log_dir)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 * 1024 * 1024, (walk.__name__, peak)
        assert found.damage is None and found.bytes_scanned == end + len(torn_bytes) + nuls
        if torn:
            assert found.reserved is None and found.torn is not None
            assert (found.torn.offset, found.torn.data) == (end, torn_bytes)
            assert found.torn.reserved == nuls
        else:
            assert found.torn is None and found.reserved == ReservedTail(last.name, end, nuls)


def test_bytes_scanned_count_the_skipped_nuls_from_an_anchor_and_at_damage(
    log_dir: Path,
) -> None:
    """The NUL chunks the scan does not hold still count as scanned: over several segments,
    from an anchor, and when the segment's name is the damage found at its first byte."""
    items = write_log(log_dir, 30, segment_bytes=3000)
    assert len(segment_files(log_dir)) > 2
    anchor = items[20][0]
    before = [
        walk_chain(log_dir).bytes_scanned,
        scan_tail(log_dir, after_seq=anchor.seq, expected_hash=anchor.hash).bytes_scanned,
    ]
    nuls = 3 * 1024 * 1024 + 5
    last = segment_files(log_dir)[-1]
    with last.open("ab") as f:
        f.truncate(last.stat().st_size + nuls)
    after = [
        walk_chain(log_dir).bytes_scanned,
        scan_tail(log_dir, after_seq=anchor.seq, expected_hash=anchor.hash).bytes_scanned,
    ]
    assert after == [b + nuls for b in before]
    for path in segment_files(log_dir):
        path.unlink()
    lone = log_dir / "00000000000000000002.jsonl"  # a log that starts past seq 1, all NULs
    lone.write_bytes(bytes(2 * 1024 * 1024))
    for found in (walk_chain(log_dir), scan_tail(log_dir)):
        assert found.damage is not None and found.damage.kind == "missing segment"
        assert found.bytes_scanned == 2 * 1024 * 1024


@pytest.mark.parametrize("misaligned", [0, 1], ids=["sector-bounded", "not sector-bounded"])
def test_a_nul_run_longer_than_a_read_chunk_keeps_its_length(
    log_dir: Path, misaligned: int
) -> None:
    """A NUL run at a line's start longer than the scan's read chunks, then a good line: a
    sector-bounded run (an unsynced append's missing sectors) makes that line unacknowledged,
    torn; any other run is damage, named with the good line's true offset."""
    items = write_log(log_dir, 6)
    end = sum(len(line) for _, line in items)
    run = -(-(end + (2 << 20) + 1000) // 512) * 512 - end + misaligned  # a whole read chunk
    later = make_lines(1, start=7, prev=items[-1][0].hash)[0][1]
    garbage = bytes(run) + b"junk\n" + later
    with segment_files(log_dir)[-1].open("ab") as f:
        f.write(garbage)
    for found in (scan_tail(log_dir), walk_chain(log_dir)):
        if misaligned:
            assert found.damage is not None and found.torn is None
            assert f"a good line follows at offset {end + run + 5}" in found.damage.detail
        else:
            assert found.damage is None and found.torn is not None
            assert (found.torn.offset, found.torn.data) == (end, garbage)


def test_nuls_at_the_end_of_a_segment_before_the_last_are_damage(log_dir: Path) -> None:
    write_log(log_dir, 12, segment_bytes=2500)
    first = segment_files(log_dir)[0]
    with first.open("ab") as f:
        f.write(b"\x00" * 300)
    scan = scan_tail(log_dir)
    assert scan.damage is not None and scan.damage.segment == first.name
    assert scan.reserved is None and scan.torn is None


def test_a_changed_byte_before_the_tail_is_damage_not_torn(log_dir: Path) -> None:
    items = write_log(log_dir, 12, segment_bytes=2500)
    files = segment_files(log_dir)
    assert len(files) >= 2
    lines = [line for _, line in items]
    for seq in (2, len(items) - 2, len(items) - 1):
        segs = list_segments(log_dir)
        first = [s.first_seq for s in segs if s.first_seq <= seq][-1]
        path = log_dir / next(s.name for s in segs if s.first_seq == first)
        original = path.read_bytes()
        index = seq - first
        within = sum(len(line) for line in lines[first - 1 : first - 1 + index])
        target = within + 25  # inside the timestamp: the framing stays intact
        damaged = original[:target] + bytes([original[target] ^ 0x01]) + original[target + 1 :]
        path.write_bytes(damaged)
        # Also tear the tail: damage before it still wins, and nothing is marked torn.
        last = files[-1]
        tail = last.read_bytes()
        last.write_bytes(tail[:-5])
        scan = scan_tail(log_dir)
        if seq == len(items) - 1:
            # The boundary: a bad line followed only by a torn one is all torn tail (no
            # complete valid record follows it, so nothing after it can have been acknowledged).
            assert scan.damage is None and scan.torn is not None
            assert (scan.torn.seq, scan.last_seq) == (seq, seq - 1)
            last.write_bytes(tail)  # with the last line whole, the same change is damage
            scan = scan_tail(log_dir)
        assert scan.torn is None
        assert scan.damage is not None
        assert (scan.damage.seq, scan.damage.kind) == (seq, "hash mismatch")
        assert scan.last_seq == seq - 1
        assert isinstance(scan.damage.error(), LogDamaged)
        last.write_bytes(tail)
        path.write_bytes(original)
    assert scan_tail(log_dir).damage is None


def test_a_bad_line_followed_by_a_good_one_is_damage_even_at_the_end(log_dir: Path) -> None:
    items = write_log(log_dir, 6)
    path = segment_files(log_dir)[-1]
    lines = [line for _, line in items]
    lines[4] = lines[4][:40] + b"X" + lines[4][41:]
    path.write_bytes(b"".join(lines))
    scan = scan_tail(log_dir)
    assert scan.torn is None and scan.damage is not None and scan.damage.seq == 5
    # A whole line with a valid hash but a wrong seq is never torn either.
    path.write_bytes(b"".join(line for _, line in items) + items[2][1])
    scan = scan_tail(log_dir)
    assert scan.torn is None and scan.damage is not None
    assert (scan.damage.seq, scan.damage.kind) == (3, "duplicate")


def test_anchor_ok_mismatch_missing(log_dir: Path) -> None:
    items = write_log(log_dir, 40, segment_bytes=3000, batch=3)
    segs = list_segments(log_dir)
    middle = segs[2].first_seq + 2
    ops = FaultOps()
    scan = scan_tail(log_dir, middle, items[middle - 1][0].hash, fileops=ops)
    assert scan.anchor == "ok" and scan.last_seq == 40 and scan.damage is None
    assert ops.opened[0] == segs[2].name and segs[0].name not in ops.opened
    assert scan.segments_scanned == len(segs) - 2
    scan = scan_tail(log_dir, middle, "f" * 64)
    assert scan.anchor == "mismatch" and scan.anchor_hash == items[middle - 1][0].hash
    assert scan.last_seq == 40 and scan.damage is None
    scan = scan_tail(log_dir, 55, "f" * 64)  # the state is ahead of the log
    assert scan.anchor == "missing" and scan.last_seq == 40 and scan.damage is None
    assert scan.segment == segs[-1].name
    scan = scan_tail(log_dir, 40, items[39][0].hash)
    assert scan.anchor == "ok" and scan.last_seq == 40 and scan.torn is None
    assert scan_tail(log_dir, 40).anchor == "unchecked"
    boundary = segs[3].first_seq - 1
    ops = FaultOps()
    scan = scan_tail(log_dir, boundary, items[boundary - 1][0].hash, fileops=ops)
    assert scan.anchor == "ok" and ops.opened[0] == segs[2].name and scan.last_seq == 40


def test_empty_log_and_empty_last_segment(log_dir: Path) -> None:
    scan = scan_tail(log_dir)
    assert (scan.last_seq, scan.segment, scan.anchor, scan.torn) == (0, None, "genesis", None)
    assert scan_tail(log_dir, 5, "a" * 64).anchor == "missing"
    items = write_log(log_dir, 5)
    (log_dir / "00000000000000000006.jsonl").write_bytes(b"")  # rotated, crashed before write
    scan = scan_tail(log_dir, 5, items[4][0].hash)
    assert scan.damage is None and scan.torn is None
    assert (scan.segment, scan.end_offset, scan.last_seq) == ("00000000000000000006.jsonl", 0, 5)
    more = make_lines(2, start=6, prev=items[4][0].hash)
    writer = LogWriter(log_dir, scan.head)
    writer.write_batch(b"".join(line for _, line in more), 6, 7, more[-1][0].hash)
    writer.close()
    assert [r.seq for r in read_records(log_dir)] == list(range(1, 8))
    (log_dir / "00000000000000000009.jsonl").write_bytes(b"")  # named past the head
    scan = scan_tail(log_dir)
    assert scan.damage is not None
    assert (scan.damage.seq, scan.damage.kind) == (8, "missing segment")
