"""Crashes with space reserved ahead of the last segment's end (issue 17).

- A rotation cuts the old segment back to its records and syncs it before the next one is
  created: every crash state the simulated disk enumerates around it boots without damage.
- A crash leaves the last segment ending in NULs (the reservation): the boot releases them,
  names them in the report (`reserved_released`), keeps nothing in quarantine.
- A torn batch followed by the reservation's NULs: only the torn bytes go to quarantine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio

from tests.faults.harness import (
    appends,
    check_recording,
    fast_dir,
    make_config,
    record,
    run_engine,
)
from tests.faults.simdisk import Tally
from timelined import commands as cmd
from timelined.auditlog.fileops import OsFileOps
from timelined.config import Config
from timelined.ctl.report_text import render_summary
from timelined.recovery.boot import boot
from timelined.recovery.report import read_report
from timelined.writer.engine import Engine

from .test_crash_states import assert_clean

SEGMENT_BYTES = 2048
CHUNK = 64 * 1024


def test_rotation_cuts_and_syncs_the_old_segment_before_creating_the_next() -> None:
    async def workload(engine: Engine) -> None:
        conv = await engine.submit(cmd.CreateConversation(name="rotating"))
        for i in range(6):
            await appends(engine, conv.root_context_id, i, 1)

    with fast_dir("tl-reserve-") as work:
        config = make_config(work / "live" / "state", SEGMENT_BYTES, reserve_bytes=4096)
        rec = record(config, workload, clean=True)
        trace = rec.sim.trace
        creates = [op for op in trace if op.kind == "create" and op.path.endswith(".jsonl")]
        assert len(creates) >= 3, "the workload rotates segments"
        assert any(op.kind == "reserve" for op in trace)
        for new in creates[1:]:
            before = [op for op in trace[: new.index] if op.path.endswith(".jsonl")]
            old = before[-1].path
            assert [(op.kind, op.path) for op in before[-2:]] == [
                ("ftruncate", old),
                ("fdatasync", old),
            ], f"{new}: the old segment is not cut back and synced first"
        tally = Tally()
        check_recording(rec, work, tally)
        assert_clean(tally, rec, min_points=25, min_trials=100)


def crash_copy(config: Config, dest: Path) -> Config:
    """The log as a power cut right now would leave it after the last fdatasync (all of it:
    every acknowledged batch was synced), with no state database: the boot rebuilds it."""
    shutil.copytree(config.log_dir, dest / "log")
    return make_config(dest, SEGMENT_BYTES * 1000, reserve_bytes=CHUNK)


def crashed_while_running(work: Path, extra: bytes = b"") -> tuple[Config, int, int]:
    """Run a workload, copy the log mid-run; returns the copy's config, the logical end and
    the file's size. `extra` is written at the logical end of the copy (a torn batch)."""
    config = make_config(work / "live" / "state", SEGMENT_BYTES * 1000, reserve_bytes=CHUNK)
    copied: list[Config] = []

    async def workload(engine: Engine) -> None:
        conv = await engine.submit(cmd.CreateConversation(name="crashing"))
        await appends(engine, conv.root_context_id, 0, 5)
        copied.append(crash_copy(config, work / "crashed" / "state"))

    result = boot(config)
    try:
        anyio.run(run_engine, config, OsFileOps(), result.head, workload)
    finally:
        result.lock.release()
    crashed = copied[0]
    (seg,) = sorted(crashed.log_dir.glob("*.jsonl"))
    data = seg.read_bytes()
    end = len(data.rstrip(b"\0"))
    assert len(data) == CHUNK > end, "the live segment ends in its reservation"
    if extra:
        seg.write_bytes(data[:end] + extra + data[end + len(extra) :])
    return crashed, end, len(data)


def test_a_crash_with_reserved_space_boots_clean_releasing_it_without_quarantine() -> None:
    with fast_dir("tl-reserve-") as work:
        crashed, end, size = crashed_while_running(work)
        result = boot(crashed)
        try:
            report = result.report
            assert report.verdict == "recovered" and report.damage is None, report
            assert report.torn == [] and report.reserved_released == size - end
            assert result.head is not None and result.head.end_offset == end
            assert report.path is not None
            assert read_report(Path(report.path)).reserved_released == size - end
            summary = render_summary(report)
            assert f"reserved bytes released: {size - end}" in summary
            assert "torn tail" not in summary
        finally:
            result.lock.release()
        (seg,) = sorted(crashed.log_dir.glob("*.jsonl"))
        assert seg.stat().st_size == end and b"\0" not in seg.read_bytes()
        assert not crashed.quarantine_dir.exists()


def test_a_torn_batch_before_the_reserved_space_quarantines_only_its_bytes() -> None:
    torn = b'{"seq":7,"ts":"2026-12-07T00:00:00Z","type":"block.appended","actor":{"ui'
    with fast_dir("tl-reserve-") as work:
        crashed, end, size = crashed_while_running(work, torn)
        result = boot(crashed)
        try:
            report = result.report
            assert report.verdict == "recovered" and report.damage is None, report
            (cut,) = report.torn
            assert (cut.offset, cut.length) == (end, len(torn))
            assert Path(cut.quarantined_to).read_bytes() == torn
            assert report.reserved_released == size - end - len(torn)
        finally:
            result.lock.release()
        (seg,) = sorted(crashed.log_dir.glob("*.jsonl"))
        assert seg.stat().st_size == end
        assert [p.name for p in crashed.quarantine_dir.iterdir()] == [Path(cut.quarantined_to).name]
