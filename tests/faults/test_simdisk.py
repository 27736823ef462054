"""The simulated disk itself: what it says survives a power cut is what POSIX allows.

If the model were wrong, the crash-state suite would pass for the wrong reason; these tests pin
down each rule: unsynced data, torn and reordered sectors, names that need a directory fsync,
renames, directories, and the state database's snapshot as of the last COMMIT.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.faults.simdisk import SECTOR, CrashPoint, CrashState, SimDisk, crash_states


def states_at(sim: SimDisk, index: int) -> list[CrashState]:
    return crash_states(sim.points[index])


def final_states(sim: SimDisk) -> list[CrashState]:
    sim.finish()
    return crash_states(sim.points[-1])


def contents(states: list[CrashState], path: str) -> set[bytes | None]:
    return {s.files.get(path) for s in states}


def test_unsynced_writes_may_be_dropped_synced_ones_never(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old\n")
    sim = SimDisk(tmp_path)
    fd = sim.open_append(str(tmp_path / "f"))
    sim.write(fd, b"new line\n")
    point = len(sim.points)  # a crash after the write, before its fsync
    sim.fsync(fd)
    sim.close(fd)
    before_fsync = crash_states(sim.points[point])
    assert {b"old\n", b"old\nnew line\n"} <= contents(before_fsync, "f")
    assert contents(final_states(sim), "f") == {b"old\nnew line\n"}


def test_a_torn_append_at_every_sector_boundary_holes_zeros_and_garbage(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    sim = SimDisk(tmp_path)
    fd = sim.open_append(str(tmp_path / "f"))
    data = bytes(range(1, 256)) * 6  # 1530 bytes, no NUL of its own
    sim.write(fd, data)
    sim.finish()
    found = {s.name: s.files["f"] for s in crash_states(sim.points[-1])}
    assert found["keep-all"] == data
    for cut in (SECTOR, 2 * SECTOR):
        assert data[:cut] in found.values(), cut
    for a, b in ((0, 512), (512, 1024), (1024, 1530)):
        hole = data[:a] + bytes(b - a) + data[b:]
        assert hole in found.values(), (a, b)  # a later sector reached the disk, this one not
    assert bytes(len(data)) in found.values()  # the size grew, no data did
    garbage = [v for k, v in found.items() if k.endswith("garbage")]
    assert garbage and garbage[0] != data and len(garbage[0]) == len(data)
    assert b"" in found.values()


def test_a_new_file_needs_its_directory_fsynced(tmp_path: Path) -> None:
    sim = SimDisk(tmp_path)
    fd = sim.open_append(str(tmp_path / "seg"), create=True)
    sim.write(fd, b"x\n")
    sim.fsync(fd)  # the data is durable, the name is not
    before_dir_fsync = len(sim.points)
    sim.fsync_dir(str(tmp_path))
    sim.close(fd)
    states = crash_states(sim.points[before_dir_fsync])
    assert contents(states, "seg") == {None, b"x\n"}, "a file fsync does not make its name durable"
    assert contents(final_states(sim), "seg") == {b"x\n"}


def test_a_rename_is_lost_or_kept_whole_until_the_directory_is_fsynced(tmp_path: Path) -> None:
    (tmp_path / "marker").write_bytes(b"old marker")
    sim = SimDisk(tmp_path)
    fd = sim.open_new(str(tmp_path / "marker.tmp"))
    sim.write(fd, b"new marker")
    sim.fsync(fd)
    sim.close(fd)
    sim.rename(str(tmp_path / "marker.tmp"), str(tmp_path / "marker"))
    before_dir_fsync = len(sim.points)
    sim.fsync_dir(str(tmp_path))
    trees = {
        (s.files.get("marker"), s.files.get("marker.tmp"))
        for s in crash_states(sim.points[before_dir_fsync])
    }
    assert (b"new marker", None) in trees  # the rename made it
    assert (b"old marker", b"new marker") in trees  # the rename was lost
    assert (b"old marker", None) in trees  # the creation of the temporary file too
    assert all(m in (b"old marker", b"new marker") for m, _ in trees), "never a torn marker"
    assert {(s.files.get("marker"), s.files.get("marker.tmp")) for s in final_states(sim)} == {
        (b"new marker", None)
    }


def test_a_new_directory_needs_its_parent_fsynced(tmp_path: Path) -> None:
    sim = SimDisk(tmp_path)
    sim.mkdir(str(tmp_path / "log"))
    fd = sim.open_append(str(tmp_path / "log" / "seg"), create=True)
    sim.fsync_dir(str(tmp_path / "log"))
    sim.write(fd, b"line\n")
    sim.fsync(fd)
    sim.close(fd)
    states = final_states(sim)
    assert any("log" not in s.dirs for s in states), "the log directory itself may vanish"
    assert all(("log/seg" in s.files) == ("log" in s.dirs) for s in states)


def test_truncate_and_unlink_are_volatile_until_synced(tmp_path: Path) -> None:
    (tmp_path / "seg").write_bytes(b"good\npartial")
    (tmp_path / "gone").write_bytes(b"x")
    sim = SimDisk(tmp_path)
    fd = sim.open_append(str(tmp_path / "seg"))
    sim.ftruncate(fd, 5)
    sim.unlink(str(tmp_path / "gone"))
    states = final_states(sim)
    assert contents(states, "seg") == {b"good\n", b"good\npartial"}
    assert contents(states, "gone") == {None, b"x"}


def test_a_truncate_may_be_lost_alone_but_no_write_leaves_a_hole_of_its_own_range(
    tmp_path: Path,
) -> None:
    """An ENOSPC truncate-back among unsynced appends: the truncate may reach the disk or not,
    but an earlier append's exact byte range as zeros before later data is not a state: no
    sector written back ever held a later append's bytes without the earlier one's."""
    durable = b"d" * 300
    (tmp_path / "seg").write_bytes(durable)
    sim = SimDisk(tmp_path)
    fd = sim.open_append(str(tmp_path / "seg"))
    first, second, partial = b"a" * 100 + b"\n", b"b" * 200 + b"\n", b"c" * 50
    for data in (first, second, partial):
        sim.write(fd, data)
    sim.ftruncate(fd, len(durable + first + second))  # the partial write cut back
    found = {s.name: s.files["seg"] for s in final_states(sim)}
    lost_truncate = durable + first + second + partial
    assert lost_truncate in found.values()  # the truncate lost
    # ...with its last sector not written (the file kept the larger size, zeros read back)
    assert lost_truncate[:512] + bytes(len(lost_truncate) - 512) in found.values()
    impossible = durable + bytes(len(first)) + second  # the first append alone dropped
    assert impossible not in found.values()
    # Of the four pending operations only the truncate (the fourth) is dropped on its own.
    writes_dropped = {f"ops-without-{i}" for i in range(3)}
    assert not [name for name in found if name.split(":")[-1] in writes_dropped]


def test_untracked_files_pass_through_and_states_are_unique(tmp_path: Path) -> None:
    sim = SimDisk(tmp_path)
    fd = sim.open_new(str(tmp_path / "state.db-journal"))  # SQLite's: not modelled
    sim.write(fd, b"sqlite")
    sim.close(fd)
    assert (tmp_path / "state.db-journal").read_bytes() == b"sqlite"
    assert not sim.trace
    states = final_states(sim)
    assert len({s.key for s in states}) == len(states) == 1


def test_the_state_snapshot_is_the_last_commit(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    sim = SimDisk(tmp_path, db_path=db)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (1)")
    sim.mkdir(str(tmp_path / "a"))  # crash point 0: inside the transaction
    conn.execute("COMMIT")
    sim.mkdir(str(tmp_path / "b"))  # crash point 1: after it
    sim.finish()
    conn.close()

    def rows(point: CrashPoint) -> list[tuple[int]]:
        assert point.db is not None
        copy = tmp_path / f"copy-{point.index}.db"
        copy.write_bytes(sim.db_snapshots[point.db])
        c = sqlite3.connect(copy)
        try:
            return c.execute("SELECT x FROM t").fetchall()
        finally:
            c.close()

    assert rows(sim.points[0]) == []
    assert rows(sim.points[1]) == [(1,)]
    assert sim.points[2].db == sim.points[1].db


def test_a_pwrite_into_reserved_space_keeps_the_size_and_tears_by_sector(
    tmp_path: Path,
) -> None:
    """posix_fallocate then fdatasync: the size is durable and the space reads as zeros; an
    unsynced pwrite into it reaches the disk sector by sector, the file keeping its size."""
    (tmp_path / "f").write_bytes(b"")
    sim = SimDisk(tmp_path)
    fd = sim.open_write(str(tmp_path / "f"))
    sim.reserve(fd, 0, 4096)
    reserved = len(sim.points)  # a crash after the reservation, before its sync
    sim.fdatasync(fd)
    data = bytes(range(1, 256)) * 6  # 1530 bytes, no NUL of its own
    sim.pwrite(fd, data, 100)
    sim.finish()
    assert {b"", bytes(4096)} <= contents(crash_states(sim.points[reserved]), "f")
    found = {s.name: s.files["f"] for s in crash_states(sim.points[-1])}
    whole = bytes(100) + data + bytes(4096 - 100 - len(data))
    assert found["keep-all"] == whole
    assert all(len(v) == 4096 for v in found.values()), "the size was synced"
    for cut in (SECTOR, 2 * SECTOR, 3 * SECTOR):
        assert whole[:cut] + bytes(4096 - cut) in found.values(), cut  # torn, zeros after
    hole = whole[:512] + bytes(512) + whole[1024:]
    assert hole in found.values()  # a later sector written, this one not
    assert bytes(4096) in found.values()  # none of it written
    sim2 = SimDisk(tmp_path)
    fd2 = sim2.open_write(str(tmp_path / "f"))
    sim2.fdatasync(fd2)
    sim2.finish()
    assert contents(crash_states(sim2.points[-1]), "f") == {whole}
