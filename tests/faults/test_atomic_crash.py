"""Crash states of the whole-file writers: a report or the marker is absent (or the old one) or
whole after a power cut at any point, never a part; once the writer returned, it is durable.

Every crash point the simulator records while the real writer runs, and every state a POSIX file
system may leave there (lost directory entries, torn and reordered sectors, zeros, garbage), is
checked. A naive writer (no temporary file) is run through the same check, which must catch it.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from timelined.auditlog.atomic import write_file_atomic
from timelined.auditlog.fileops import FileOps, write_all
from timelined.recovery.marker import make_marker, take_marker, write_marker
from timelined.recovery.report import Report, list_reports, read_report, write_report

from .simdisk import SimDisk, crash_states, durable_state


def every_state(sim: SimDisk) -> list[tuple[str, dict[str, bytes]]]:
    sim.finish()
    return [
        (f"{point.describe()} / {state.name}", dict(state.files))
        for point in sim.points
        for state in crash_states(point)
    ]


def torn_files(sim: SimDisk, target: str, allowed: set[bytes | None]) -> list[str]:
    """Where a crash leaves `target` with content other than `allowed` (None: absent)."""
    return [
        f"{where}: {files.get(target, b'')[:40]!r}"
        for where, files in every_state(sim)
        if files.get(target) not in allowed
    ]


def test_a_recovery_report_is_absent_or_whole_at_every_crash(tmp_path: Path) -> None:
    root = tmp_path / "state"
    root.mkdir()
    sim = SimDisk(root, untracked=lambda rel: False)  # the reports modelled too
    report = Report(
        id="recovery-20261122T033800123456Z-1",
        kind="recovery",
        verdict="recovered",
        version="test",
        started_at="2026-11-22T03:38:00.123456Z",
        actions=["a long action " * 40] * 4,  # several sectors: tearing is possible
    )
    path = write_report(root / "reports", report, sim)
    whole = path.read_bytes()
    assert len(whole) > 2048
    rel = "reports/" + path.name
    assert not torn_files(sim, rel, {None, whole})
    # The states a crash leaves are readable by the daemon's own report listing.
    seen: set[bool] = set()
    for n, (where, files) in enumerate(every_state(sim)):
        if rel in files:
            out = tmp_path / f"s{n}"
            (out / "reports").mkdir(parents=True)
            (out / rel).write_bytes(files[rel])
            assert [read_report(p).id for p in list_reports(out / "reports")] == [report.id], where
        seen.add(rel in files)
    assert seen == {True, False}, "crashes before and after the rename were both enumerated"
    kinds = [op.kind for op in sim.trace]
    assert kinds == ["mkdir", "fsync_dir", "open_new", "write", "fsync", "rename", "fsync_dir"]
    assert durable_state(sim.points[-1]).files.get(rel) == whole, "durable once written"


def test_the_marker_is_absent_or_whole_and_the_boot_reads_it_so(tmp_path: Path) -> None:
    sim = SimDisk(tmp_path, untracked=lambda rel: False)
    marker = make_marker(41, "a" * 64, "00000000000000000001.jsonl", 12345)
    write_marker(tmp_path / "clean-shutdown", marker, sim)
    whole = (tmp_path / "clean-shutdown").read_bytes()
    assert not torn_files(sim, "clean-shutdown", {None, whole})
    problems = set()
    for n, (_, files) in enumerate(every_state(sim)):
        out = tmp_path / f"boot{n}"
        out.mkdir()
        for name, data in files.items():
            if name in ("clean-shutdown", "clean-shutdown.tmp"):
                (out / name).write_bytes(data)
        taken = take_marker(out / "clean-shutdown")
        assert taken.marker in (None, marker)
        problems.add(taken.problem)
        assert not (out / "clean-shutdown.tmp").exists(), "a stale temporary file is removed"
    assert problems == {"absent", None}, "never an unreadable marker"
    assert durable_state(sim.points[-1]).files.get("clean-shutdown") == whole


def test_an_overwrite_leaves_the_old_file_or_the_new_one(tmp_path: Path) -> None:
    (tmp_path / "metrics.prom").write_bytes(b"old scrape\n" * 100)
    sim = SimDisk(tmp_path, untracked=lambda rel: False)
    old = (tmp_path / "metrics.prom").read_bytes()
    new = b"new scrape\n" * 300
    write_file_atomic(tmp_path / "metrics.prom", new, fileops=sim, mode=0o644, exact_mode=True)
    assert not torn_files(sim, "metrics.prom", {old, new})
    assert {files.get("metrics.prom") for _, files in every_state(sim)} == {old, new}


def naive_write(path: Path, data: bytes, ops: FileOps) -> None:
    """What the recipe is for: written in place, fsynced, but torn by a crash mid-way."""
    h = ops.open_new(str(path))
    write_all(ops, h, data)
    ops.fsync(h)
    ops.close(h)


def test_the_check_catches_a_writer_that_is_not_atomic(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old" * 400)
    sim = SimDisk(tmp_path, untracked=lambda rel: False)
    naive_write(tmp_path / "f", msgspec.json.encode(["new"] * 400), sim)
    assert torn_files(sim, "f", {None, b"old" * 400, (tmp_path / "f").read_bytes()})
