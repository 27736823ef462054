"""LogWriter with space reserved ahead (issue 17): a reservation per chunk, pwrite + fdatasync
per batch, the reservation cut before a rotation and at a clean close, ENOSPC on a
reservation refused with nothing written."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tracemalloc
from pathlib import Path
from types import ModuleType

import pytest

from tests.faults.faultops import FaultOps
from timelined.auditlog.reader import read_line, read_records
from timelined.auditlog.scan import scan_tail, walk_chain
from timelined.auditlog.writer import LogHead, LogWriter
from timelined.errors import DiskFull, FatalStorageError, StorageError
from timelined.verifier.replay import log_records

from .conftest import make_lines, segment_files
from .test_writer import batch

CHUNK = 64 * 1024
REPO = Path(__file__).resolve().parents[2]


def logical(items: list, hi: int) -> int:  # type: ignore[type-arg]
    return sum(len(line) for _, line in items[:hi])


def test_one_reservation_per_chunk_and_one_fdatasync_per_batch(log_dir: Path) -> None:
    ops = FaultOps()
    items = make_lines(40)
    writer = LogWriter(log_dir, LogHead(), fileops=ops, reserve_bytes=CHUNK)
    for lo in range(0, 40, 2):
        writer.write_batch(*batch(items, lo, lo + 2))
    # 40 records of ~700 bytes fit one 64 KiB chunk: one reservation for 20 batches.
    assert logical(items, 40) < CHUNK
    assert ops.calls["reserve"] == 1 and ops.calls["reserve_bytes"] == CHUNK
    assert ops.calls["write"] == 20 and ops.calls["fdatasync"] == 20
    seg = segment_files(log_dir)[0]
    assert seg.stat().st_size == CHUNK  # the live file: records, then the reserved NULs
    assert seg.read_bytes()[logical(items, 40) :] == bytes(CHUNK - logical(items, 40))
    stats = writer.stats()
    assert (stats.segment_size, stats.segment_reserved) == (logical(items, 40), CHUNK)
    # Readers and the boot's scan stop at the logical end: the NULs are neither records nor
    # damage.
    assert [r.seq for r in read_records(log_dir)] == list(range(1, 41))
    scan = scan_tail(log_dir)
    assert scan.damage is None and scan.torn is None and scan.last_seq == 40
    assert scan.reserved is not None and scan.reserved.offset == logical(items, 40)
    writer.close()


def test_a_batch_past_the_chunk_reserves_the_next_one_from_the_logical_end(
    log_dir: Path,
) -> None:
    ops = FaultOps()
    items = make_lines(12)
    writer = LogWriter(log_dir, LogHead(), fileops=ops, reserve_bytes=2048)
    for lo in range(12):
        writer.write_batch(*batch(items, lo, lo + 1))
    assert 1 < ops.calls["reserve"] < 12  # per chunk, not per batch
    writer.close()
    assert segment_files(log_dir)[0].stat().st_size == logical(items, 12)


def test_a_clean_close_leaves_exactly_the_records(log_dir: Path) -> None:
    items = make_lines(5)
    writer = LogWriter(log_dir, LogHead(), reserve_bytes=CHUNK)
    writer.write_batch(*batch(items, 0, 5))
    seg = segment_files(log_dir)[0]
    assert seg.stat().st_size == CHUNK
    writer.close()
    assert seg.read_bytes() == b"".join(line for _, line in items)
    # ... and a writer opened on it again carries on from there.
    writer = LogWriter(log_dir, LogHead(5, items[4][0].hash, seg.stat().st_size))
    more = make_lines(3, 6, items[4][0].hash)
    writer.write_batch(*batch(more, 0, 3))
    writer.close()
    assert walk_chain(log_dir).head_seq == 8 and seg.stat().st_size == logical(items + more, 8)


def test_rotation_cuts_the_old_segment_back_to_its_records_first(log_dir: Path) -> None:
    ops = FaultOps()
    items = make_lines(30)
    writer = LogWriter(log_dir, LogHead(), fileops=ops, segment_bytes=3000, reserve_bytes=CHUNK)
    for lo in range(0, 30, 2):
        writer.write_batch(*batch(items, lo, lo + 2))
    files = segment_files(log_dir)
    assert len(files) > 2
    for path in files[:-1]:  # sealed: whole records, not a byte of reserved space
        data = path.read_bytes()
        assert data.endswith(b"\n") and b"\0" not in data
    assert files[-1].stat().st_size == CHUNK
    assert walk_chain(log_dir).ok
    writer.close()
    assert b"\0" not in files[-1].read_bytes()


def test_a_writer_opened_on_reserved_space_keeps_it(log_dir: Path) -> None:
    """An engine opened on a log a crashed run left (without the boot's release)."""
    items = make_lines(6)
    writer = LogWriter(log_dir, LogHead(), reserve_bytes=CHUNK)
    writer.write_batch(*batch(items, 0, 3))
    head = writer.head
    crashed = log_dir.parent / "crashed"  # what a crash leaves: the file as it is now
    crashed.mkdir()
    seg = crashed / segment_files(log_dir)[0].name
    seg.write_bytes(segment_files(log_dir)[0].read_bytes())
    writer.close()
    again = LogWriter(crashed, head, reserve_bytes=CHUNK)
    assert again.stats().segment_reserved == CHUNK
    again.write_batch(*batch(items, 3, 6))
    again.close()
    assert seg.read_bytes() == b"".join(line for _, line in items)


def test_enospc_on_a_reservation_refuses_the_batch_with_nothing_written(log_dir: Path) -> None:
    ops = FaultOps()
    items = make_lines(12)
    writer = LogWriter(log_dir, LogHead(), fileops=ops, reserve_bytes=CHUNK)
    writer.write_batch(*batch(items, 0, 2))
    writer.close()
    seg = segment_files(log_dir)[0]
    kept = seg.read_bytes()
    writer = LogWriter(log_dir, writer.head, fileops=ops, reserve_bytes=CHUNK)
    need = logical(items, 4) - logical(items, 2)
    # A nearly full disk: not the chunk, but the batch fits: the batch is written.
    ops.space = need + 100
    writer.write_batch(*batch(items, 2, 4))
    assert writer.stats().segment_size == logical(items, 4)
    kept = seg.read_bytes().rstrip(b"\0")
    # Full: the reservation fails part way (the file grew by what fit), the batch is refused,
    # the file is as it was, the writer carries on once space returns.
    ops.space = 50
    with pytest.raises(DiskFull):
        writer.write_batch(*batch(items, 4, 6))
    assert seg.read_bytes() == kept and not writer.failed
    assert writer.stats().write_errors == 1
    ops.space = None
    writer.write_batch(*batch(items, 4, 6))
    writer.close()
    assert [r.seq for r in read_records(log_dir)] == list(range(1, 7))
    assert seg.stat().st_size == logical(items, 6)


@pytest.mark.parametrize("reserve", [1, CHUNK])
def test_a_stranger_s_bytes_are_never_overwritten_or_cut(log_dir: Path, reserve: int) -> None:
    """Appended by someone else past the writer's end: a reservation over them refuses the
    batch (1: every batch reserves); the cut at a rotation or a close fails the writer
    (CHUNK: the batch goes into the space reserved before), never destroying them."""
    items = make_lines(4)
    writer = LogWriter(log_dir, LogHead(), reserve_bytes=reserve)
    writer.write_batch(*batch(items, 0, 1))
    seg = segment_files(log_dir)[0]
    with seg.open("ab") as f:
        f.write(b"a stranger's line\n")
    if reserve == 1:
        with pytest.raises(StorageError, match="the writer left"):
            writer.write_batch(*batch(items, 1, 2))
        writer.close()
    else:
        writer.write_batch(*batch(items, 1, 2))
        with pytest.raises(FatalStorageError, match="the writer left"):
            writer.close()
    assert seg.read_bytes().endswith(b"a stranger's line\n")


def test_verify_log_accepts_a_last_segment_ending_in_reserved_space(log_dir: Path) -> None:
    items = make_lines(30)
    writer = LogWriter(log_dir, LogHead(), segment_bytes=4000, reserve_bytes=CHUNK)
    for lo in range(0, 30, 3):
        writer.write_batch(*batch(items, lo, lo + 3))
    assert segment_files(log_dir)[-1].read_bytes().endswith(b"\0" * 100)
    script = [sys.executable, "-I", str(REPO / "tools" / "verify_log.py"), str(log_dir)]
    out = subprocess.run(script, capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.startswith("OK 30 events"), out
    writer.close()
    # NULs anywhere else are still a fault: in a segment before the last ...
    first = segment_files(log_dir)[0]
    good = first.read_bytes()
    first.write_bytes(good + b"\0" * 10)
    out = subprocess.run(script, capture_output=True, text=True, check=False)
    assert out.returncode == 1 and "FAIL" in out.stderr, out
    first.write_bytes(good)
    # ... or before the last record of the last segment.
    last = segment_files(log_dir)[-1]
    data = last.read_bytes()
    last.write_bytes(b"\0" * 10 + data + b"\0" * 10)
    out = subprocess.run(script, capture_output=True, text=True, check=False)
    assert out.returncode == 1 and "FAIL" in out.stderr, out


def _verify_log_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("verify_log", REPO / "tools" / "verify_log.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_verify_log_finds_the_content_end_backwards_by_chunks(tmp_path: Path, chunk: int) -> None:
    tool = _verify_log_tool()
    path = tmp_path / "f"
    cases = [b"", b"\0" * 20, b"ab\n", b"ab\n" + b"\0" * 9, b"\0a\0\0\n\0" + b"\0" * 30, b"x"]
    for data in cases:
        path.write_bytes(data)
        with path.open("rb") as f:
            assert tool.content_end(f, chunk) == len(data.rstrip(b"\0")), data
            assert f.tell() == 0


def test_verify_log_never_holds_the_reserved_tail(log_dir: Path) -> None:
    """16 MiB of NULs after the last record (the most `[log] reserve_bytes` allows) are read
    a chunk at a time, not as one line."""
    items = make_lines(10)
    writer = LogWriter(log_dir, LogHead(), reserve_bytes=16 << 20)
    writer.write_batch(*batch(items, 0, 10))
    last = segment_files(log_dir)[-1]
    assert last.stat().st_size >= 16 << 20
    tool = _verify_log_tool()
    tracemalloc.start()
    try:
        assert tool.verify(log_dir)[0] == 10
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    writer.close()
    assert peak < 4 << 20, peak


def test_readers_stop_at_the_reserved_space_even_while_a_batch_fills_it(log_dir: Path) -> None:
    """A reader past the committed head may see a batch's later page before its first one
    (zeros, then lines): the log's end for every reader, never damage."""
    items = make_lines(8)
    writer = LogWriter(log_dir, LogHead(), reserve_bytes=CHUNK)
    writer.write_batch(*batch(items, 0, 4))
    seg = segment_files(log_dir)[0]
    end = logical(items, 4)
    in_flight = b"".join(line for _, line in items[4:8])
    with seg.open("r+b") as f:  # the batch's bytes from its second page on, not its first
        f.seek(end + 4096)
        f.write(in_flight[4096 - (end % 4096) :] if len(in_flight) > 4096 else in_flight)
    assert [r.seq for r in read_records(log_dir)] == [1, 2, 3, 4]
    assert [r.seq for r in log_records(log_dir)] == [1, 2, 3, 4]
    writer.close()


def test_the_line_of_a_seq_is_found_from_the_end_past_the_reserved_space(log_dir: Path) -> None:
    """read_line (the Merkle tree's boot check) reads the segment backwards from its end."""
    items = make_lines(5)
    writer = LogWriter(log_dir, LogHead(), reserve_bytes=CHUNK)
    writer.write_batch(*batch(items, 0, 5))
    assert read_line(log_dir, 5) == items[4][1]
    assert read_line(log_dir, 6) is None
    writer.close()
