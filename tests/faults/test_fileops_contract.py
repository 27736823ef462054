"""The `FileOps` contract: what every implementation must do, run against each of them.

In the eventsourcing style: one abstract suite (`FileOpsContract`), one subclass per
implementation giving the `ops` fixture — the real `OsFileOps`, the crash simulator with no crash
(`SimDisk`, every file modelled, its model checked against the real tree after each test), the
fault injector with no fault armed (`FaultOps`, checked to have fired nothing). A fake that
drifts from the real thing fails here, not in a crash test's puzzling verdict.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from timelined.auditlog.atomic import AtomicFile, fsync_path, make_dirs, write_file_atomic
from timelined.auditlog.fileops import FileOps, Handle, OsFileOps, write_all

from .faultops import FaultOps
from .simdisk import SimDisk, crash_states


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def put(ops: FileOps, path: Path, data: bytes) -> None:
    """A file made through `ops` (so that the simulator's model knows it)."""
    h = ops.open_new(str(path))
    write_all(ops, h, data)
    ops.close(h)


class FileOpsContract:
    """The behaviours every `FileOps` has; subclasses provide the `ops` fixture."""

    @pytest.fixture
    def ops(self, tmp_path: Path) -> Iterator[FileOps]:
        raise NotImplementedError
        yield  # pragma: no cover

    def test_append_creates_once_and_appends(self, ops: FileOps, tmp_path: Path) -> None:
        path = str(tmp_path / "seg")
        h = ops.open_append(path, create=True)
        write_all(ops, h, b"one\n")
        ops.close(h)
        with pytest.raises(FileExistsError):
            ops.open_append(path, create=True)
        h = ops.open_append(path)
        assert ops.write(h, b"two\n") == 4
        assert ops.fstat_size(h) == 8
        ops.close(h)
        assert Path(path).read_bytes() == b"one\ntwo\n"
        with pytest.raises(FileNotFoundError):
            ops.open_append(str(tmp_path / "missing"))

    def test_write_all_writes_every_byte_of_a_large_buffer(
        self, ops: FileOps, tmp_path: Path
    ) -> None:
        data = os.urandom(3 << 20) + b"end"
        h = ops.open_new(str(tmp_path / "big"))
        write_all(ops, h, memoryview(data))
        ops.fsync(h)
        ops.close(h)
        assert (tmp_path / "big").read_bytes() == data

    def test_write_may_be_short_and_write_all_continues(self, ops: FileOps, tmp_path: Path) -> None:
        h = ops.open_new(str(tmp_path / "f"))
        n = ops.write(h, b"abcdef")
        assert 0 < n <= 6  # one write(2): a prefix of the data
        write_all(ops, h, b"abcdef"[n:])
        ops.close(h)
        assert (tmp_path / "f").read_bytes() == b"abcdef"

    def test_pread_reads_at_an_offset_and_empty_past_the_end(
        self, ops: FileOps, tmp_path: Path
    ) -> None:
        put(ops, tmp_path / "r", b"0123456789")
        h = ops.open_read(str(tmp_path / "r"))
        try:
            assert ops.pread(h, 4, 3) == b"3456"
            assert ops.pread(h, 100, 8) == b"89"
            assert ops.pread(h, 4, 10) == b""
            assert ops.fstat_size(h) == 10
        finally:
            ops.close(h)
        with pytest.raises(FileNotFoundError):
            ops.open_read(str(tmp_path / "missing"))

    def test_fsync_and_fsync_dir(self, ops: FileOps, tmp_path: Path) -> None:
        h = ops.open_new(str(tmp_path / "f"))
        write_all(ops, h, b"x")
        ops.fsync(h)
        ops.close(h)
        ops.fsync_dir(str(tmp_path))
        assert (tmp_path / "f").read_bytes() == b"x"
        with pytest.raises(FileNotFoundError):
            ops.fsync_dir(str(tmp_path / "missing"))

    def test_ftruncate_shrinks_and_extends_with_zeros(self, ops: FileOps, tmp_path: Path) -> None:
        h = ops.open_append(str(tmp_path / "t"), create=True)
        write_all(ops, h, b"abcdef")
        ops.ftruncate(h, 2)
        assert ops.fstat_size(h) == 2
        write_all(ops, h, b"Z")  # an append goes to the new end
        ops.ftruncate(h, 5)
        ops.close(h)
        assert (tmp_path / "t").read_bytes() == b"abZ\0\0"

    def test_reserve_pwrite_fdatasync(self, ops: FileOps, tmp_path: Path) -> None:
        """Reserved space reads as zeros; pwrite writes where it is told (no O_APPEND), also
        into reserved space without changing the size; a reservation never shrinks a file."""
        path = str(tmp_path / "r")
        h = ops.open_write(path, create=True)
        with pytest.raises(FileExistsError):
            ops.open_write(path, create=True)
        ops.reserve(h, 0, 1000)
        assert ops.fstat_size(h) == 1000
        write_all(ops, h, b"line one\n", 0)
        assert ops.pwrite(h, b"two\n", 9) == 4
        ops.fdatasync(h)
        assert ops.fstat_size(h) == 1000
        ops.reserve(h, 13, 10)  # inside the file: the size stays
        assert ops.fstat_size(h) == 1000
        ops.reserve(h, 13, 2000)
        ops.ftruncate(h, 13)
        ops.fdatasync(h)
        ops.close(h)
        assert (tmp_path / "r").read_bytes() == b"line one\ntwo\n"
        h = ops.open_write(path)
        ops.reserve(h, 13, 7)
        write_all(ops, h, b"3", 13)
        ops.close(h)
        assert (tmp_path / "r").read_bytes() == b"line one\ntwo\n3" + bytes(6)
        with pytest.raises(FileNotFoundError):
            ops.open_write(str(tmp_path / "missing"))

    def test_open_new_empties_and_takes_the_mode_through_the_umask(
        self, ops: FileOps, tmp_path: Path
    ) -> None:
        put(ops, tmp_path / "n", b"old content")
        put(ops, tmp_path / "n", b"new")  # open_new again: emptied first
        assert (tmp_path / "n").read_bytes() == b"new"
        umask = os.umask(0)
        os.umask(umask)
        h = ops.open_new(str(tmp_path / "m"), 0o666)
        ops.close(h)
        assert mode_of(tmp_path / "m") == 0o666 & ~umask
        h = ops.open_new(str(tmp_path / "e"), 0o600)
        ops.fchmod(h, 0o644)  # exact: the umask does not apply
        ops.close(h)
        assert mode_of(tmp_path / "e") == 0o644

    def test_rename_replaces_the_target(self, ops: FileOps, tmp_path: Path) -> None:
        put(ops, tmp_path / "a", b"A")
        put(ops, tmp_path / "b", b"B")
        ops.rename(str(tmp_path / "a"), str(tmp_path / "b"))
        assert not (tmp_path / "a").exists() and (tmp_path / "b").read_bytes() == b"A"
        with pytest.raises(FileNotFoundError):
            ops.rename(str(tmp_path / "a"), str(tmp_path / "c"))

    def test_unlink_listdir_size_mkdir(self, ops: FileOps, tmp_path: Path) -> None:
        ops.mkdir(str(tmp_path / "d"))
        with pytest.raises(FileExistsError):
            ops.mkdir(str(tmp_path / "d"))
        assert (tmp_path / "d").is_dir()
        put(ops, tmp_path / "d" / "x", b"12345")
        put(ops, tmp_path / "d" / "y", b"")
        assert sorted(ops.listdir(str(tmp_path / "d"))) == ["x", "y"]
        assert ops.size(str(tmp_path / "d" / "x")) == 5
        ops.unlink(str(tmp_path / "d" / "x"))
        assert ops.listdir(str(tmp_path / "d")) == ["y"]
        with pytest.raises(FileNotFoundError):
            ops.unlink(str(tmp_path / "d" / "x"))
        with pytest.raises(FileNotFoundError):
            ops.size(str(tmp_path / "d" / "x"))

    def test_atomic_write_replaces_whole_and_leaves_no_temporary(
        self, ops: FileOps, tmp_path: Path
    ) -> None:
        target = tmp_path / "report.json"
        write_file_atomic(target, b"first", fileops=ops)
        write_file_atomic(target, b"second", fileops=ops, mode=0o644, exact_mode=True)
        assert target.read_bytes() == b"second" and mode_of(target) == 0o644
        assert os.listdir(tmp_path) == ["report.json"]

    def test_atomic_write_with_a_named_temporary_and_durable_directories(
        self, ops: FileOps, tmp_path: Path
    ) -> None:
        reports = tmp_path / "a" / "reports"
        make_dirs(reports, ops)
        make_dirs(reports, ops)  # already there: nothing to do
        with AtomicFile(reports / "x", fileops=ops, tmp=reports / "x.partial") as f:
            f.write(b"part one, ")
            assert (reports / "x.partial").exists() and not (reports / "x").exists()
            f.write(b"part two")
            f.commit()
        assert (reports / "x").read_bytes() == b"part one, part two"
        assert os.listdir(reports) == ["x"]
        fsync_path(reports / "x", ops)

    def test_an_uncommitted_atomic_file_leaves_the_old_one(
        self, ops: FileOps, tmp_path: Path
    ) -> None:
        target = tmp_path / "marker"
        write_file_atomic(target, b"old", fileops=ops)
        with pytest.raises(RuntimeError), AtomicFile(target, fileops=ops) as f:
            f.write(b"new, but the export broke off")
            raise RuntimeError("the stream ended early")
        with AtomicFile(target, fileops=ops) as f:
            f.write(b"never committed")
        assert target.read_bytes() == b"old"
        assert os.listdir(tmp_path) == ["marker"]
        with pytest.raises(FileNotFoundError):
            write_file_atomic(tmp_path / "no-such-dir" / "f", b"x", fileops=ops)


class TestOsFileOps(FileOpsContract):
    @pytest.fixture
    def ops(self, tmp_path: Path) -> Iterator[FileOps]:
        yield OsFileOps()


class TestSimDiskWithoutCrash(FileOpsContract):
    """The crash simulator must behave as the real thing; its model must match what it did."""

    @pytest.fixture
    def ops(self, tmp_path: Path) -> Iterator[FileOps]:
        sim = SimDisk(tmp_path, untracked=lambda rel: False)
        yield sim
        sim.finish()
        kept = crash_states(sim.points[-1])[0]  # keep-all: the tree as it is, nothing lost
        assert kept.name == "keep-all"
        real: dict[str, bytes] = {}
        for dirpath, _, files in os.walk(tmp_path):
            for name in files:
                full = Path(dirpath) / name
                real[str(full.relative_to(tmp_path))] = full.read_bytes()
        assert dict(kept.files) == real, "the model drifted from the real files"
        assert not sim.adopted, f"files met that the model never saw made: {sim.adopted}"


class TestFaultOpsWithoutFault(FileOpsContract):
    """The fault injector, nothing armed: the real file operations, counted."""

    @pytest.fixture
    def ops(self, tmp_path: Path) -> Iterator[FileOps]:
        faults = FaultOps()
        yield faults
        assert not faults.fired
        assert faults.calls["any"] > 0, "the calls went through the injector"


def test_the_fault_injector_fails_the_armed_call_only(tmp_path: Path) -> None:
    ops = FaultOps()
    write_file_atomic(tmp_path / "a", b"1", fileops=ops)
    ops.arm("sync", 2, errno.EIO)  # the second fsync from now: the directory's
    with pytest.raises(OSError) as caught:
        write_file_atomic(tmp_path / "a", b"2", fileops=ops)
    assert caught.value.errno == errno.EIO and ops.fired == [f"fsync_dir #2 {tmp_path}"]
    write_file_atomic(tmp_path / "a", b"3", fileops=ops)  # not sticky: the next one works
    ops.space = 2
    h: Handle = ops.open_new(str(tmp_path / "b"))
    assert ops.write(h, b"abcd") == 2  # a full disk: a short write, then ENOSPC
    with pytest.raises(OSError) as full:
        ops.write(h, b"cd")
    ops.close(h)
    assert full.value.errno == errno.ENOSPC
    # A reservation past the space left grows the file by what fits, then fails; writing into
    # reserved space takes no more space.
    ops.space = 100
    h = ops.open_write(str(tmp_path / "c"), create=True)
    ops.reserve(h, 0, 60)
    with pytest.raises(OSError) as full:
        ops.reserve(h, 0, 200)
    assert full.value.errno == errno.ENOSPC and ops.fstat_size(h) == 100
    assert ops.pwrite(h, b"x" * 100, 0) == 100 and ops.space == 0
    ops.close(h)
