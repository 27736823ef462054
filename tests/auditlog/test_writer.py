"""LogWriter: group-commit writes, fsync per mode, rotation, ENOSPC undo, fatal fsync."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tests.faults.faultops import FaultOps
from timelined.auditlog.fileops import Handle, OsFileOps
from timelined.auditlog.reader import read_records
from timelined.auditlog.scan import scan_tail, walk_chain
from timelined.auditlog.writer import LogHead, LogWriter
from timelined.errors import DiskFull, FatalStorageError, LogDamaged, StorageError

from .conftest import log_bytes, make_lines, segment_files, write_log


def batch(items: list, lo: int, hi: int) -> tuple[bytes, int, int, str]:  # type: ignore[type-arg]
    """Write arguments for items[lo:hi] (0-based, end exclusive)."""
    chunk = items[lo:hi]
    return b"".join(line for _, line in chunk), chunk[0][0].seq, chunk[-1][0].seq, chunk[-1][0].hash


def test_always_mode_one_write_and_one_fsync_per_batch(log_dir: Path) -> None:
    ops = FaultOps()
    items = make_lines(30)
    fsynced: list[float] = []
    writer = LogWriter(log_dir, LogHead(), fileops=ops, on_fsync=fsynced.append)
    assert ops.calls["fsync_dir"] == 1  # the new log directory's entry, in STATE_DIR
    for lo in range(0, 30, 10):
        writer.write_batch(*batch(items, lo, lo + 10))
    assert ops.calls["write"] == 3
    assert ops.calls["fsync"] == 3
    assert ops.calls["fsync_dir"] == 2  # plus the first segment's entry
    assert len(fsynced) == 3 and writer.last_fsync_seconds == fsynced[-1] >= 0
    stats = writer.stats()
    assert (stats.head_seq, stats.durable_seq, stats.writes, stats.fsyncs) == (30, 30, 3, 3)
    assert stats.bytes_written == sum(len(line) for _, line in items) == writer.segment_size
    assert writer.head_hash == items[-1][0].hash
    writer.close()
    assert [r.seq for r in read_records(log_dir)] == list(range(1, 31))


def test_reopen_continues_from_the_scanned_head(log_dir: Path) -> None:
    items = write_log(log_dir, 10)
    more = make_lines(5, start=11, prev=items[-1][0].hash)
    scan = scan_tail(log_dir, 0)
    writer = LogWriter(log_dir, scan.head, fsync="always")
    writer.write_batch(*batch(more, 0, 5))
    writer.close()
    assert walk_chain(log_dir).head_seq == 15
    with pytest.raises(ValueError, match="does not follow"):
        LogWriter(log_dir, scan_tail(log_dir).head).write_batch(*batch(more, 0, 5))


def test_open_refuses_a_head_that_does_not_match_the_files(log_dir: Path) -> None:
    items = write_log(log_dir, 5)
    size = segment_files(log_dir)[0].stat().st_size
    with pytest.raises(LogDamaged):
        LogWriter(log_dir, LogHead(4, items[3][0].hash, size - len(items[4][1])))
    with pytest.raises(LogDamaged):
        LogWriter(log_dir, LogHead(0, items[0][0].prev, 0))


def test_fsync_failure_is_fatal_and_final(log_dir: Path) -> None:
    ops = FaultOps()
    items = make_lines(20)
    writer = LogWriter(log_dir, LogHead(), fileops=ops)
    writer.write_batch(*batch(items, 0, 5))
    ops.arm("sync")  # the next fsync
    with pytest.raises(FatalStorageError) as caught:
        writer.write_batch(*batch(items, 5, 10))
    assert caught.value.params["errno"] == errno.EIO
    assert writer.failed
    ops.lift()  # even when the disk "recovers", the writer never retries
    before = ops.calls["fsync"]
    for call in (
        lambda: writer.write_batch(*batch(items, 10, 15)),
        writer.sync,
        writer.sync_if_due,
        writer.close,
    ):
        with pytest.raises(FatalStorageError):
            call()
    assert ops.calls["fsync"] == before
    with pytest.raises(FatalStorageError):
        writer.write_batch(*batch(items, 10, 15))


def test_failed_directory_fsync_on_a_new_segment_is_fatal(log_dir: Path) -> None:
    ops = FaultOps()
    writer = LogWriter(log_dir, LogHead(), fileops=ops)
    ops.arm("sync")  # the first segment's entry (the log directory's is done)
    with pytest.raises(FatalStorageError):
        writer.write_batch(*batch(make_lines(1), 0, 1))
    assert writer.failed


# reserve_bytes 0: batches appended as before issue 17; 1: each batch reserves exactly its own
# size (a chunk smaller than any batch), so a full disk refuses the reservation, not the write.
@pytest.mark.parametrize("reserve", [0, 1])
@pytest.mark.parametrize("mode", ["always", "interval", "off"])
def test_enospc_refuses_the_batch_and_leaves_the_log_byte_identical(
    log_dir: Path, mode: str, reserve: int
) -> None:
    ops = FaultOps()
    items = make_lines(30)
    writer = LogWriter(
        log_dir,
        LogHead(),
        fileops=ops,
        fsync=mode,  # type: ignore[arg-type]
        reserve_bytes=reserve,
    )
    writer.write_batch(*batch(items, 0, 10))
    writer.sync()
    before = log_bytes(log_dir)
    ops.space = 700  # the next batch fits partly: a short write, then ENOSPC
    with pytest.raises(DiskFull) as caught:
        writer.write_batch(*batch(items, 10, 20))
    assert caught.value.recoverable and caught.value.params["path"].endswith(".jsonl")
    assert log_bytes(log_dir) == before
    assert (writer.head_seq, writer.head_hash) == (10, items[9][0].hash)
    assert writer.stats().write_errors == 1 and not writer.failed
    ops.space = None  # space returns: the same batch now succeeds
    writer.write_batch(*batch(items, 10, 20))
    writer.write_batch(*batch(items, 20, 30))
    writer.close()
    assert [r.seq for r in read_records(log_dir)] == list(range(1, 31))
    assert walk_chain(log_dir).ok


@pytest.mark.parametrize("reserve", [0, 1])
def test_other_write_errors_are_storage_errors_and_recoverable(log_dir: Path, reserve: int) -> None:
    ops = FaultOps()
    items = make_lines(10)
    writer = LogWriter(log_dir, LogHead(), fileops=ops, reserve_bytes=reserve)
    writer.write_batch(*batch(items, 0, 5))
    before = log_bytes(log_dir)
    ops.arm("write", err=errno.EIO, sticky=True)
    with pytest.raises(StorageError) as caught:
        writer.write_batch(*batch(items, 5, 10))
    assert caught.value.params["errno"] == errno.EIO
    assert log_bytes(log_dir) == before
    ops.lift()
    writer.write_batch(*batch(items, 5, 10))
    writer.close()
    assert walk_chain(log_dir).head_seq == 10


@pytest.mark.parametrize("reserve", [0, 1])
def test_enospc_on_a_new_segment_removes_it(log_dir: Path, reserve: int) -> None:
    ops = FaultOps()
    items = make_lines(12)
    seg = sum(len(line) for _, line in items[:4])
    writer = LogWriter(log_dir, LogHead(), fileops=ops, segment_bytes=seg, reserve_bytes=reserve)
    writer.write_batch(*batch(items, 0, 4))
    before = log_bytes(log_dir)
    ops.space = 0
    with pytest.raises(DiskFull):
        writer.write_batch(*batch(items, 4, 8))  # rotation: the new segment gets nothing
    assert log_bytes(log_dir) == before and ops.calls["unlink"] == 1
    ops.space = None
    writer.write_batch(*batch(items, 4, 8))
    writer.close()
    assert [p.name for p in segment_files(log_dir)] == [
        "00000000000000000001.jsonl",
        "00000000000000000005.jsonl",
    ]


def test_rotation_at_segment_bytes_and_reads_across_segments(log_dir: Path) -> None:
    ops = FaultOps()
    items = make_lines(50)
    writer = LogWriter(log_dir, LogHead(), fileops=ops, segment_bytes=2000)
    starts = []
    for lo in range(0, 50, 3):
        if writer.segment_path is None or writer.segment_size >= 2000:
            starts.append(items[lo][0].seq)
        writer.write_batch(*batch(items, lo, min(lo + 3, 50)))
        assert writer.segment_path is not None
        assert writer.segment_path.endswith(f"{starts[-1]:020d}.jsonl")
    writer.close()
    files = segment_files(log_dir)
    assert [int(p.name[:20]) for p in files] == starts and len(files) > 3
    # A segment grows past the limit only by the batch that crossed it.
    assert all(p.stat().st_size < 2000 + 3 * 700 for p in files)
    assert writer.stats().rotations == len(files)
    assert ops.calls["fsync_dir"] == 1 + len(files)  # log dir + every new segment
    assert [r.seq for r in read_records(log_dir)] == list(range(1, 51))
    assert walk_chain(log_dir).ok


def test_interval_mode_syncs_when_due(log_dir: Path) -> None:
    now = [100.0]
    ops = FaultOps()
    items = make_lines(10)
    writer = LogWriter(
        log_dir,
        LogHead(),
        fileops=ops,
        fsync="interval",
        fsync_interval_ms=50,
        clock=lambda: now[0],
    )
    writer.write_batch(*batch(items, 0, 2))
    assert ops.calls["fsync"] == 0 and writer.durable_seq == 0
    assert writer.sync_if_due() is False
    now[0] += 0.049
    writer.write_batch(*batch(items, 2, 4))
    assert ops.calls["fsync"] == 0
    now[0] += 0.002
    assert writer.sync_if_due() is True
    assert ops.calls["fsync"] == 1 and writer.durable_seq == 4
    assert writer.sync_if_due() is False  # nothing unsynced
    now[0] += 1
    writer.write_batch(*batch(items, 4, 6))  # the interval has passed: synced at once
    assert ops.calls["fsync"] == 2 and writer.durable_seq == 6
    writer.write_batch(*batch(items, 6, 8))
    writer.sync()
    assert ops.calls["fsync"] == 3 and writer.durable_seq == 8
    writer.write_batch(*batch(items, 8, 10))
    writer.close()  # a clean close syncs
    assert ops.calls["fsync"] == 4


def test_interval_mode_syncs_the_old_segment_before_rotating(log_dir: Path) -> None:
    now = [0.0]
    ops = FaultOps()
    items = make_lines(6)
    writer = LogWriter(
        log_dir,
        LogHead(),
        fileops=ops,
        fsync="interval",
        segment_bytes=1,
        clock=lambda: now[0],
    )
    writer.write_batch(*batch(items, 0, 3))
    assert ops.calls["fsync"] == 0
    writer.write_batch(*batch(items, 3, 6))  # rotates: only the last segment may be torn
    assert ops.calls["fsync"] == 1 and writer.durable_seq == 3
    writer.close()


def test_off_mode_never_fsyncs(log_dir: Path) -> None:
    ops = FaultOps()
    items = make_lines(20)
    writer = LogWriter(log_dir, LogHead(), fileops=ops, fsync="off", segment_bytes=1500)
    for lo in range(0, 20, 4):
        writer.write_batch(*batch(items, lo, lo + 4))
    writer.sync()
    assert writer.sync_if_due() is False
    writer.close()
    assert ops.calls["fsync"] == ops.calls["fsync_dir"] == 0
    assert len(segment_files(log_dir)) > 1 and walk_chain(log_dir).ok


def test_calls_after_close_and_bad_batches_are_refused(log_dir: Path) -> None:
    items = make_lines(4)
    writer = LogWriter(log_dir, LogHead(), fsync="off")
    with pytest.raises(ValueError, match="whole lines"):
        writer.write_batch(items[0][1][:-1], 1, 1, items[0][0].hash)
    with pytest.raises(ValueError, match="does not follow"):
        writer.write_batch(*batch(items, 1, 2))
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        writer.write_batch(*batch(items, 0, 1))


class _Spy(OsFileOps):
    """Real file operations that note the writer's stats as each write starts."""

    def __init__(self) -> None:
        self.writer: LogWriter | None = None
        self.seen: list[tuple[str | None, str | None]] = []

    def _note(self) -> None:
        if self.writer is not None:
            stats = self.writer.stats()
            self.seen.append((stats.segment, stats.creating))

    def write(self, handle: Handle, data: bytes | memoryview) -> int:
        self._note()
        return super().write(handle, data)

    def pwrite(self, handle: Handle, data: bytes | memoryview, offset: int) -> int:
        self._note()
        return super().pwrite(handle, data, offset)


@pytest.mark.parametrize("reserve", [0, 65536])
def test_stats_name_the_segment_being_created_until_it_is_current(
    log_dir: Path, reserve: int
) -> None:
    """From before the next segment exists until the stats name it as current, `creating`
    names it (the verifier's file watcher takes it as the writer's); otherwise None."""
    spy = _Spy()
    items = make_lines(6)
    writer = LogWriter(log_dir, LogHead(), fileops=spy, segment_bytes=1, reserve_bytes=reserve)
    spy.writer = writer
    for lo in range(3):  # segment_bytes=1: every batch starts a segment
        writer.write_batch(*batch(items, lo, lo + 1))
        assert writer.stats().creating is None
    names = [p.name for p in segment_files(log_dir)]
    assert spy.seen == [(None, names[0]), (names[0], names[1]), (names[1], names[2])]
    writer.close()
    # A creation refused (the new segment's directory entry fails to sync: fatal) leaves
    # nothing named.
    ops = FaultOps()
    failing = LogWriter(log_dir.parent / "other", LogHead(), fileops=ops)
    ops.arm("sync")
    with pytest.raises(FatalStorageError):
        failing.write_batch(*batch(items, 0, 1))
    assert failing.stats().creating is None
