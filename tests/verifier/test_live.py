"""The verifier beside a live Engine: no false positives while writers append; log changes the
writer did not make are told apart from its own appends and rotations."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from tests.verifier.conftest import config_for
from tests.verifier.workload import append_blocks, populate
from timelined import commands as cmd
from timelined.api.verify import VerifyReport
from timelined.auditlog.segments import list_segments
from timelined.errors import LogDamaged
from timelined.verifier import Verifier
from timelined.verifier import watch as watch_module
from timelined.verifier.reports import list_reports, read_report
from timelined.verifier.watch import LogWatch
from timelined.writer.engine import Engine


def append_bytes(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


def cut_bytes(path: Path, count: int) -> None:
    os.truncate(path, path.stat().st_size - count)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def flip_byte_in_place(path: Path, offset: int) -> None:
    """As `dd conv=notrunc` would: the same file, the same size, one byte changed."""
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 1]))
    assert path.stat().st_size == size


def remove(path: Path) -> None:
    path.unlink()


def first_line_length(path: Path) -> int:
    return path.read_bytes().index(b"\n") + 1


def open_contexts(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id FROM contexts WHERE status IN ('active', 'paused')")
        return [str(r[0]) for r in rows]
    finally:
        conn.close()


async def test_verification_while_writers_append(large_dir: Path) -> None:
    """~20k events verified twice while 8 writers append through the engine, with small
    segments (many rotations): every run is clean, the watchers start no run of their own, and
    no write is refused."""
    config = config_for(large_dir, segment_bytes=64 * 1024)
    async with Engine.open(config) as engine:
        start_seq = engine.last_seq
        assert start_seq >= 20_000
        segments_before = len(list_segments(config.log_dir))
        verifier = Verifier(config, engine, processes=True)
        contexts = open_contexts(config.state_db)
        stop = anyio.Event()
        done = anyio.Event()
        outcome: dict[str, tuple[int, list[BaseException]]] = {}
        reports: list[VerifyReport] = []

        async def writers() -> None:
            try:
                outcome["writers"] = await append_blocks(
                    engine, contexts, stop, writers=8, pause=0.002
                )
            finally:
                done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(verifier.run_forever)
            tg.start_soon(writers)
            await anyio.sleep(0.3)
            for _ in range(2):
                report = await verifier.verify()
                assert report is not None
                reports.append(report)
            stop.set()
            await done.wait()
            await anyio.sleep(1.5)  # time for a false alarm from the watchers to show up
            status = verifier.status()
            tg.cancel_scope.cancel()
    appended, errors = outcome["writers"]
    assert errors == []
    assert appended > 300
    assert engine.last_seq == start_seq + appended
    for report in reports:
        assert report.state == "ok", report.summary
        assert report.events_checked == report.snapshot_seq >= start_seq
        assert report.chain is not None and report.chain.head_seq >= report.snapshot_seq
    assert reports[-1].snapshot_seq > start_seq  # the writers' changes were part of a run
    triggers = [read_report(p).trigger for p in list_reports(config.reports_dir)]
    assert status.runs == 2 and status.drift_runs == 0, (status, triggers)
    assert len(list_segments(config.log_dir)) > segments_before + 3  # rotations meanwhile


async def watching(log_dir: Path, stats: Any) -> LogWatch:
    """A LogWatch with short retries, its baseline taken."""
    watch = LogWatch(log_dir, stats, retries=3, settle=0.01)
    await anyio.to_thread.run_sync(watch.baseline)
    return watch


async def rotate(engine: Engine) -> str:
    """Append until the writer leaves its current segment; the new segment's name."""
    assert engine.writer is not None
    current = engine.writer.stats().segment
    while engine.writer.stats().segment == current:
        await populate(engine, engine.last_seq + 5, writers=2)
    new = engine.writer.stats().segment
    assert new is not None
    return new


async def test_a_rotation_while_the_baseline_lists_the_segments_is_not_an_alarm(
    small_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer rotating between the watcher's look at its stats and its listing of the
    segments: the new segment must not be remembered as sealed at its first bytes (then every
    append to it looked like someone else's: a verification run of its own, seen under load)."""
    config = config_for(small_dir, segment_bytes=4096)
    async with Engine.open(config) as engine:
        writer = engine.writer
        assert writer is not None
        before = writer.stats()
        await rotate(engine)  # the stats taken before name the old segment
        listed = False
        real_list = watch_module.list_segments

        def listing(log_dir: Path) -> Any:
            nonlocal listed
            listed = True
            return real_list(log_dir)

        def stats() -> Any:  # what the writer said until the listing: the rotation falls between
            return writer.stats() if listed else before

        monkeypatch.setattr(watch_module, "list_segments", listing)
        watch = await watching(config.log_dir, stats)
        # The new segment takes more appends, then is left by the next rotation.
        current = writer.stats().segment
        assert current is not None
        await rotate(engine)
        assert await anyio.to_thread.run_sync(watch.check, [current]) == []


async def test_a_segment_listed_before_the_writer_switched_to_it_is_not_remembered_sealed(
    small_dir: Path,
) -> None:
    """The writer creates the next segment and writes its first batch before its stats name it:
    a baseline listing in that window (stats before and after still name the old segment) must
    not remember the new one as sealed at its first batch (it was reported as changed once the
    writer rotated past it: a CI failure of
    test_verification_while_writers_append)."""
    config = config_for(small_dir, segment_bytes=4096)
    async with Engine.open(config) as engine:
        writer = engine.writer
        assert writer is not None
        before = writer.stats()
        await rotate(engine)
        in_window = True

        def stats() -> Any:  # the window: the new segment is on disk, the stats name the old one
            return before if in_window else writer.stats()

        watch = await watching(config.log_dir, stats)
        in_window = False
        await rotate(engine)  # more appends to the new segment, then rotated past
        names = [s.name for s in list_segments(config.log_dir)]
        assert await anyio.to_thread.run_sync(watch.check, names) == []
        assert await anyio.to_thread.run_sync(watch.sweep) == []
        # A stranger's segment past the writer's is still told apart.
        stranger = config.log_dir / "99999999999999999999.jsonl"
        stranger.write_bytes(b'{"seq":1}\n')
        found = await anyio.to_thread.run_sync(watch.check, [stranger.name])
        assert found and "not a segment this daemon's writer made" in found[0][1], found
        stranger.unlink()


async def test_the_segment_the_writer_is_creating_is_its_own_at_the_first_look(
    small_dir: Path,
) -> None:
    """A check or sweep naming the segment the writer is creating (its stats: `creating`, not
    yet `segment`) takes it as the writer's at once, with no retry to wait out the window."""
    config = config_for(small_dir, segment_bytes=4096)
    async with Engine.open(config) as engine:
        writer = engine.writer
        assert writer is not None
        before = writer.stats()
        current = await rotate(engine)
        window = dataclasses.replace(before, creating=current)
        in_window = True

        def stats() -> Any:
            return window if in_window else writer.stats()

        watch = LogWatch(config.log_dir, stats, retries=1, settle=0.0)
        await anyio.to_thread.run_sync(watch.baseline)
        assert await anyio.to_thread.run_sync(watch.check, [current]) == []
        assert await anyio.to_thread.run_sync(watch.sweep) == []
        window = before  # the same look without `creating`: a stranger's segment
        found = await anyio.to_thread.run_sync(watch.check, [current])
        assert found and "not a segment this daemon's writer made" in found[0][1], found
        in_window = False


async def test_log_watch_takes_the_space_the_writer_reserved_as_its_own(small_dir: Path) -> None:
    """The current segment's file is longer than its records (issue 17's reserved space):
    that size is the writer's; a stranger's bytes past it are not."""
    config = config_for(small_dir, segment_bytes=4096)
    config = msgspec.structs.replace(
        config, log=msgspec.structs.replace(config.log, fsync="always", reserve_bytes=65536)
    )
    async with Engine.open(config) as engine:
        writer = engine.writer
        assert writer is not None
        watch = await watching(config.log_dir, writer.stats)
        await populate(engine, engine.last_seq + 30, writers=4)  # appends and rotations
        stats = writer.stats()
        assert stats.segment_reserved == 65536 > stats.segment_size and stats.rotations > 1
        names = [s.name for s in list_segments(config.log_dir)]
        assert await anyio.to_thread.run_sync(watch.check, names) == []
        active = Path(list_segments(config.log_dir)[-1].path)
        append_bytes(active, b'{"seq":999999}\n')
        found = await anyio.to_thread.run_sync(watch.check, [active.name])
        assert found and "15 bytes were added" in found[0][1], found
        cut_bytes(active, 15)  # the writer's cut at its stop must find its own size


async def test_log_watch_tells_our_writes_from_others(small_dir: Path) -> None:
    config = config_for(small_dir, segment_bytes=4096)
    async with Engine.open(config) as engine:
        writer = engine.writer
        assert writer is not None
        watch = await watching(config.log_dir, writer.stats)
        await populate(engine, engine.last_seq + 60, writers=4)  # appends and rotations
        names = [s.name for s in list_segments(config.log_dir)]
        assert await anyio.to_thread.run_sync(watch.check, names) == []

        segments = list_segments(config.log_dir)
        active = Path(segments[-1].path)
        sealed = Path(segments[len(segments) // 2].path)

        append_bytes(active, b'{"seq":999999}\n')
        found = await anyio.to_thread.run_sync(watch.check, [active.name])
        assert found and "added" in found[0][1], found
        cut_bytes(active, 15)
        assert await anyio.to_thread.run_sync(watch.check, [active.name]) == []

        flip_byte(sealed, 100)
        found = await anyio.to_thread.run_sync(watch.check, [sealed.name])
        assert found and "changed after it was sealed" in found[0][1], found

        stranger = config.log_dir / f"{99_999_999:020d}.jsonl"
        append_bytes(stranger, b"")
        found = await anyio.to_thread.run_sync(watch.check, [stranger.name])
        assert found and "not a segment" in found[0][1], found

        other = Path(segments[1].path)
        remove(other)
        found = await anyio.to_thread.run_sync(watch.check, [other.name])
        assert found and "removed" in found[0][1], found


async def _watch_triggered_run(verifier: Verifier) -> VerifyReport:
    """The first run the log watcher started, waited for up to 8 s."""
    started = time.monotonic()
    while time.monotonic() - started < 8:
        latest = verifier.latest()
        if latest is not None and latest.trigger.startswith("watch:log/"):
            return latest
        await anyio.sleep(0.05)
    raise AssertionError(f"no watch-triggered run; latest: {verifier.latest()}")


@pytest.mark.parametrize("how", ["flip a byte", "remove"])
async def test_changed_sealed_segment_starts_a_run(small_dir: Path, how: str) -> None:
    config = config_for(small_dir)
    async with Engine.open(config) as engine:
        verifier = Verifier(config, engine)
        async with anyio.create_task_group() as tg:
            tg.start_soon(verifier.run_forever)
            await anyio.sleep(0.5)  # the watcher's baseline
            segments = list_segments(config.log_dir)
            target = Path(segments[len(segments) // 2].path)
            if how == "remove":
                remove(target)
                seq = segments[len(segments) // 2].first_seq
            else:
                flip_byte(target, first_line_length(target) + 60)  # inside the second line
                seq = segments[len(segments) // 2].first_seq + 1
            latest = await _watch_triggered_run(verifier)
            tg.cancel_scope.cancel()
    assert latest.trigger == f"watch:log/{target.name}"
    assert latest.state == "damaged", latest.summary
    assert latest.chain is not None and latest.chain.damage is not None
    assert latest.chain.damage.seq == seq


async def test_an_edit_in_place_of_the_segment_being_appended_to_starts_a_run(
    small_dir: Path,
) -> None:
    """Same inode, same size: LogWatch takes it for the writer's own bytes. But the writer never
    closes the segment it appends to, so a close after writing it is someone else's: verify."""
    config = config_for(small_dir)
    async with Engine.open(config) as engine:
        verifier = Verifier(config, engine)
        async with anyio.create_task_group() as tg:
            tg.start_soon(verifier.run_forever)
            await anyio.sleep(0.5)  # the watcher's baseline
            last = list_segments(config.log_dir)[-1]
            target = Path(last.path)
            flip_byte_in_place(target, first_line_length(target) + 60)  # inside the second line
            latest = await _watch_triggered_run(verifier)
            tg.cancel_scope.cancel()
    assert latest.trigger == f"watch:log/{target.name}"
    assert latest.state == "damaged", latest.summary
    assert latest.chain is not None and latest.chain.damage is not None
    assert latest.chain.damage.seq == last.first_seq + 1


async def test_damage_found_while_serving_refuses_writes_and_says_so(small_dir: Path) -> None:
    config = config_for(small_dir)
    said: list[str] = []
    async with Engine.open(config) as engine:
        verifier = Verifier(config, engine, said.append)
        context = open_contexts(config.state_db)[0]
        async with anyio.create_task_group() as tg:
            tg.start_soon(verifier.run_forever)
            await engine.submit(cmd.AppendBlock(context_id=context, role="user", content="before"))
            first = Path(list_segments(config.log_dir)[0].path)
            flip_byte(first, first_line_length(first) + 60)  # inside seq 2
            report = await verifier.verify()
            assert report is not None and report.state == "damaged", report
            assert isinstance(engine.read_only, LogDamaged)
            assert engine.read_only.params["seq"] == 2
            assert report.id in engine.read_only.message
            assert config.damage_path.exists()  # for the next boots (recovery/damage.py)
            with pytest.raises(LogDamaged, match="damaged at seq 2"):
                await engine.submit(cmd.AppendBlock(context_id=context, role="user", content="x"))
            tg.cancel_scope.cancel()
    assert said and said[-1].startswith("degraded (reads only): the audit log is damaged at seq 2")
    assert "LOG DAMAGED at seq 2" in said[-1]
