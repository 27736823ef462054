"""Every crash state of short workloads on the simulated disk: Rule 1 and Rule 2 after each.

For each workload, every mutating file operation of the log is a crash point; each crash point
gives the file trees a POSIX file system may leave (tests/faults/simdisk.py), each booted with the
state database as of the last COMMIT, an older one, and none. After every boot: every
acknowledged event is in the log, the state equals the replay of the log, a boot record (and for
an unclean stop a recovery report) is on disk, no exception escaped, and the engine writes again.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import anyio
import pytest

from tests.faults.harness import (
    FullDisk,
    Recording,
    appends,
    check_recording,
    conversation_workload,
    fast_dir,
    make_config,
    prepare,
    record,
    text,
)
from tests.faults.simdisk import SimDisk, Tally
from timelined import commands as cmd
from timelined.auditlog.fileops import Handle
from timelined.auditlog.segments import list_segments
from timelined.errors import DiskFull
from timelined.writer.engine import Engine

SEGMENT_BYTES = 2048  # small: the short workloads rotate segments several times


def assert_clean(tally: Tally, rec: Recording, *, min_points: int, min_trials: int) -> None:
    print(tally.line(), f"points={tally.points} states={tally.states}")
    assert not tally.failures, "\n".join(tally.failures)
    assert tally.lost == 0 and tally.failed_boots == 0
    assert tally.points >= min_points and tally.trials >= min_trials, tally
    assert tally.acknowledged_checked > 0
    assert not rec.sim.adopted, f"files touched outside the model: {rec.sim.adopted}"


def test_fresh_directory_commands_rotation_and_clean_stop() -> None:
    """create, append, spawn, a batch of three, merge, append; three rotations; the marker."""
    with fast_dir("tl-crash-") as work:
        config = make_config(work / "live" / "state", SEGMENT_BYTES)
        rec = record(config, conversation_workload, clean=True)
        kinds = [op.kind for op in rec.sim.trace]
        # The boot record's new reports/ (its entry fsynced), then the log directory.
        assert kinds[:3] == ["fsync_dir", "mkdir", "fsync_dir"], "new directories are durable"
        assert kinds.count("create") >= 3, "the workload rotates segments"
        assert kinds[-3:] == ["fsync", "rename", "fsync_dir"], "the marker: fsync, rename, dir"
        tally = Tally()
        check_recording(rec, work, tally)
        assert_clean(tally, rec, min_points=25, min_trials=120)


def test_restart_after_a_clean_stop_takes_the_marker_then_writes() -> None:
    """The marker's removal (unlink + directory fsync) comes before any write: crash anywhere."""
    with fast_dir("tl-crash-") as work:
        config = make_config(work / "live" / "state", SEGMENT_BYTES)
        prepare(config, conversation_workload, clean=True)

        async def more(engine: Engine) -> None:
            conv = await engine.submit(cmd.CreateConversation(name="second run"))
            await appends(engine, conv.root_context_id, 0, 2)
            await engine.submit(
                cmd.AppendBlock(context_id=conv.root_context_id, role="user", content=text(9))
            )

        rec = record(config, more, clean=False)
        kinds = [op.kind for op in rec.sim.trace]
        assert kinds[:2] == ["unlink", "fsync_dir"], "the marker is taken durably, first"
        tally = Tally()
        check_recording(rec, work, tally)
        assert_clean(tally, rec, min_points=8, min_trials=30)


@pytest.mark.parametrize("fragment", [37, 700, 1300])
def test_crash_while_cutting_a_torn_tail(fragment: int) -> None:
    """Boot after an unclean stop with a torn tail: quarantine dir, copy, rename, truncate."""
    with fast_dir("tl-crash-") as work:
        config = make_config(work / "live" / "state", SEGMENT_BYTES * 4)
        prepare(config, conversation_workload, clean=False)
        seg = Path(list_segments(config.log_dir)[-1].path)
        whole = seg.read_bytes()
        last_line = whole[:-1].rsplit(b"\n", 1)[-1]
        torn = (last_line * 3)[:fragment]  # an append of the next batch, torn before its newline
        with seg.open("ab") as fh:
            fh.write(torn)

        async def one_more(engine: Engine) -> None:
            await engine.submit(cmd.CreateConversation(name="after the cut"))

        rec = record(config, one_more, clean=True)
        kinds = [op.kind for op in rec.sim.trace]
        assert "ftruncate" in kinds and "rename" in kinds
        assert seg.read_bytes().startswith(whole)
        tally = Tally()
        check_recording(rec, work, tally)
        assert_clean(tally, rec, min_points=12, min_trials=25)


@pytest.mark.parametrize(
    ("kind", "nth", "room", "reserve"),
    [
        ("write", 3, 200, 0),  # appended without reserving: truncate back
        ("write", 6, 600, 0),  # unlink a new segment
        ("write", 3, 200, 2048),  # a pwrite into reserved space cut short: truncate back
        ("reserve", 2, 300, 2048),  # a reservation that grew the file, then ENOSPC
        ("reserve", 3, 0, 2048),  # ... of a new segment's first batch: unlink the segment
    ],
)
def test_crash_while_undoing_a_refused_write(kind: str, nth: int, room: int, reserve: int) -> None:
    """ENOSPC part-way through a batch or its reservation: nothing of the batch is kept (the
    file cut back to the batch's start, or a new segment unlinked) and that is synced."""
    refused: list[DiskFull] = []

    async def workload(engine: Engine) -> None:
        conv = await engine.submit(cmd.CreateConversation(name="c"))
        for i in range(7):
            try:
                await engine.submit(
                    cmd.AppendBlock(context_id=conv.root_context_id, role="user", content=text(i))
                )
            except DiskFull as exc:
                refused.append(exc)

    with fast_dir("tl-crash-") as work:
        config = make_config(work / "live" / "state", SEGMENT_BYTES, reserve_bytes=reserve)
        rec = record(
            config,
            workload,
            clean=True,
            sim_factory=lambda root, db: FullDisk(root, db, nth, room, kind),
        )
        assert len(refused) == 1, "exactly one batch met the full disk"
        kinds = [op.kind for op in rec.sim.trace]
        assert "ftruncate" in kinds or "unlink" in kinds, "the refused bytes were undone"
        if (kind, nth) == ("reserve", 3):
            assert "unlink" in kinds, "the segment created for the refused batch was removed"
        tally = Tally()
        check_recording(rec, work, tally)
        assert_clean(tally, rec, min_points=15, min_trials=40)


def test_interval_mode_loses_at_most_the_unsynced_interval_never_corrupts() -> None:
    """log.fsync = "interval": a crash may lose what was not yet fsynced, and the state, which
    committed before the log's fsync, may be ahead of the log: rebuilt, reported with loss."""

    async def paced(engine: Engine) -> None:
        conv = await engine.submit(cmd.CreateConversation(name="paced"))
        for i in range(8):
            await appends(engine, conv.root_context_id, i * 10, 1 + i % 3)
            if i % 2:
                # A read commits the answered rows now (the COMMIT follows the answers, and
                # in interval mode the answers come before the log's fsync): a state ahead of
                # the log's synced part, as a read right after an append makes it.
                await engine.caught_up()
            await anyio.sleep(0.004 * (i % 3))  # some batches wait past the interval, some not

    with fast_dir("tl-crash-") as work:
        config = make_config(work / "live" / "state", SEGMENT_BYTES, "interval", 5)
        rec = record(config, paced, clean=True)
        kinds = [op.kind for op in rec.sim.trace]
        writes, fsyncs = kinds.count("write"), kinds.count("fsync")
        tally = Tally()
        check_recording(rec, work, tally, older=False)
        print(tally.line(), f"writes={writes} fsyncs={fsyncs} verdicts={dict(tally.verdicts)}")
        assert not tally.failures, "\n".join(tally.failures)
        assert tally.acknowledged_checked > 0 and tally.trials >= 60
        if fsyncs < writes:  # some batches were not fsynced at once: a state ahead of the log
            assert tally.verdicts["recovered_with_loss"] > 0


# --- the suite finds what it is meant to find -------------------------------------------------


class ForgetsDirFsync(SimDisk):
    """A broken writer: directory fsyncs of the log directory never happen."""

    def fsync_dir(self, path: str) -> None:
        if self._rel(path) == "log":
            return
        super().fsync_dir(path)


class ForgetsFsync(SimDisk):
    """A broken writer: every other fsync (or fdatasync) of a segment is skipped but reported
    as done."""

    skipped = 0

    def _skip(self, handle: Handle) -> bool:
        opened = self._open.get(handle)
        if opened is not None and opened.rel.endswith(".jsonl"):
            self.skipped += 1
            return bool(self.skipped % 2)
        return False

    def fsync(self, handle: Handle) -> None:
        if not self._skip(handle):
            super().fsync(handle)

    def fdatasync(self, handle: Handle) -> None:
        if not self._skip(handle):
            super().fdatasync(handle)


@pytest.mark.parametrize("broken", [ForgetsDirFsync, ForgetsFsync])
def test_the_suite_catches_a_missing_fsync(broken: type[SimDisk]) -> None:
    """Validation of the method: drop a needed fsync and the crash states lose acked events."""
    with fast_dir("tl-crash-") as work:
        config = make_config(work / "live" / "state", SEGMENT_BYTES)
        rec = record(
            config,
            partial(conversation_workload, batch=2),
            clean=False,
            sim_factory=lambda root, db: broken(root, db_path=db),
        )
        tally = Tally()
        check_recording(rec, work, tally, older=False)
        print(tally.line())
        assert tally.lost > 0, "a missing fsync must show up as lost acknowledged events"
