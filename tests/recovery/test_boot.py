"""Boot recovery in-process: every verdict, each from a state directory made for it."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import anyio
import pytest

from tests.helpers import dump_state, replay_dump
from timelined import commands as cmd
from timelined.auditlog.segments import list_segments
from timelined.auditlog.writer import LogHead
from timelined.config import Config, LogConfig, default_config
from timelined.ctl.report_text import render_summary
from timelined.errors import BootFailed, LogDamaged, StateLocked
from timelined.recovery.boot import BootResult, boot
from timelined.recovery.marker import mark_clean
from timelined.recovery.report import list_reports, read_report
from timelined.state import queries as q
from timelined.writer.engine import Engine


def make_config(tmp_path: Path) -> Config:
    return default_config(tmp_path / "state", log=LogConfig(fsync="off", segment_bytes=4096))


def write_blocks(
    config: Config,
    head: LogHead | None,
    n: int,
    *,
    clean: bool = True,
    read_only: LogDamaged | None = None,
) -> list[str]:
    """Open the engine at `head`, append n blocks, close (writing the marker when clean)."""
    ids: list[str] = []

    async def go() -> None:
        async with Engine.open(config, head=head, read_only=read_only) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="c"))
            for i in range(n):
                res = await engine.submit(
                    cmd.AppendBlock(context_id=conv.root_context_id, role="user", content=f"m{i}")
                )
                ids.append(res.block.id)
        if clean:
            w = engine.writer
            assert w is not None
            s = w.stats()
            mark_clean(config.marker_path, s.head_seq, s.head_hash, s.segment, s.segment_size)

    anyio.run(go)
    return ids


def boot_once(config: Config) -> BootResult:
    result = boot(config)
    result.lock.release()
    return result


def assert_state_is_replay(config: Config, tmp_path: Path) -> None:
    assert dump_state(config.state_db) == replay_dump(config.log_dir, tmp_path / "replay.db")


def test_fresh_directory_is_a_clean_boot(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    result = boot_once(config)
    assert result.report.verdict == "clean"
    assert config.state_db.exists()
    assert list_reports(config.reports_dir)
    assert "A new state directory" in render_summary(result.report)


def test_clean_stop_takes_the_fast_path_without_scanning(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    first = boot_once(config)
    write_blocks(config, first.head, 50)
    second = boot_once(config)
    r = second.report
    assert (r.verdict, r.fast_path, r.kind) == ("clean", True, "boot")
    assert "had stopped cleanly; nothing needed" in render_summary(r)
    assert r.lines_scanned == 0 and r.segments_scanned == 0
    assert not config.marker_path.exists(), "the marker is removed at boot"
    write_blocks(config, second.head, 5)  # the writer appends where the marker said
    assert_state_is_replay(config, tmp_path)


def test_unclean_stop_is_recovered_and_reported(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_blocks(config, boot_once(config).head, 30, clean=False)
    r = boot_once(config).report
    assert r.verdict == "recovered" and r.kind == "recovery" and not r.marker_found
    assert r.integrity_check == "ok"
    assert r.recovery_report is not None
    full = read_report(config.reports_dir / f"{r.recovery_report}.json")
    assert full.kind == "recovery" and full.verdict == "recovered"
    assert "recovered" in render_summary(full)
    assert_state_is_replay(config, tmp_path)


def test_state_behind_the_log_is_rolled_forward(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_blocks(config, boot_once(config).head, 10)
    old = tmp_path / "old.db"
    shutil.copy(config.state_db, old)
    write_blocks(config, boot_once(config).head, 25, clean=False)
    shutil.copy(old, config.state_db)
    r = boot_once(config).report
    assert r.verdict == "recovered"
    assert r.events_rolled_forward == 26  # a conversation and 25 blocks
    assert_state_is_replay(config, tmp_path)


def test_state_ahead_of_the_log_is_rebuilt_with_loss(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_blocks(config, boot_once(config).head, 10, clean=False)
    log_copy = tmp_path / "log-copy"
    shutil.copytree(config.log_dir, log_copy)
    write_blocks(config, boot_once(config).head, 7, clean=False)
    shutil.rmtree(config.log_dir)
    shutil.copytree(log_copy, config.log_dir)  # the log lost its last 8 events; the state has them
    r = boot_once(config).report
    assert r.verdict == "recovered_with_loss"
    assert r.events_lost == 8
    assert r.rebuilds and r.rebuilds[0].quarantined_to
    assert Path(r.rebuilds[0].quarantined_to).exists()
    assert_state_is_replay(config, tmp_path)


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_missing_or_corrupt_state_is_rebuilt(tmp_path: Path, damage: str) -> None:
    config = make_config(tmp_path)
    write_blocks(config, boot_once(config).head, 20, clean=False)
    for suffix in ("-wal", "-shm"):
        Path(str(config.state_db) + suffix).unlink(missing_ok=True)
    if damage == "missing":
        config.state_db.unlink()
    else:
        config.state_db.write_bytes(b"this is not a database" * 500)
    r = boot_once(config).report
    assert r.verdict == "recovered"
    assert r.rebuilds and r.rebuilds[0].events_replayed == 21
    assert_state_is_replay(config, tmp_path)


def test_torn_tails_are_cut_into_quarantine(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_blocks(config, boot_once(config).head, 12, clean=False)
    seg = list_segments(config.log_dir)[-1].path
    whole = Path(seg).read_bytes()
    last_line = whole.rstrip(b"\n").rsplit(b"\n", 1)[-1] + b"\n"
    for cut in range(1, len(last_line), max(1, len(last_line) // 25)):
        fragment = last_line[:cut]  # a write of one more record, torn by the crash
        with open(seg, "ab") as fh:
            fh.write(fragment)
        r = boot_once(config).report
        assert r.verdict == "recovered", (cut, r)
        assert len(r.torn) == 1 and r.torn[0].length == len(fragment)
        assert Path(r.torn[0].quarantined_to).read_bytes() == fragment
        assert Path(seg).read_bytes() == whole, "nothing complete is lost"
    assert_state_is_replay(config, tmp_path)


def test_damage_before_the_tail_starts_read_only(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_blocks(config, boot_once(config).head, 30, clean=False)
    first = Path(list_segments(config.log_dir)[0].path)
    data = bytearray(first.read_bytes())
    at = data.index(b'"content":"m3"') + len('"content":"m')
    data[at] = ord("X")  # an edited byte in an old line
    first.write_bytes(bytes(data))
    config.state_db.unlink()  # force a rebuild so the scan reads from the start
    result = boot(config)
    try:
        r = result.report
        assert r.verdict == "degraded"
        assert r.damage is not None and r.damage.seq == 5
        assert result.read_only is not None

        async def check() -> None:
            async with Engine.open(config, read_only=result.read_only) as engine:
                with pytest.raises(LogDamaged):
                    await engine.submit(cmd.CreateConversation(name="x"))
                convs, _ = await engine.read(
                    q.list_conversations, include_archived=True, limit=10, after=None
                )
                assert len(convs) == 1  # reads work on what came before the damage

        anyio.run(check)
    finally:
        result.lock.release()
    assert not config.marker_path.exists()


def test_second_boot_on_the_same_directory_refuses(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    held = boot(config)
    try:
        with pytest.raises(StateLocked) as info:
            boot(config)
        assert info.value.params["pid"] is not None
    finally:
        held.lock.release()


def test_a_marker_the_files_do_not_match_is_checked_and_said_so(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_blocks(config, boot_once(config).head, 10)  # a clean stop: marker written
    config.state_db.unlink()  # then the state goes missing behind its back
    for suffix in ("-wal", "-shm"):
        Path(str(config.state_db) + suffix).unlink(missing_ok=True)
    r = boot_once(config).report
    assert r.verdict == "recovered" and r.marker_found and not r.fast_path
    assert r.marker_problem == "the state database does not match it: the state database is missing"
    summary = render_summary(r)
    assert "had stopped cleanly, but the files did not match" in summary, summary
    assert "had not stopped cleanly" not in summary


def test_a_state_directory_that_is_a_file_fails_the_boot_naming_it(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.state_dir.write_text("not a directory\n")  # e.g. state_dir pointed at a file
    with pytest.raises(BootFailed) as info:
        boot(config)
    assert f"{config.state_dir} exists and is not a directory" in info.value.message


def test_a_report_that_cannot_be_written_fails_the_boot_saying_so(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_blocks(config, boot_once(config).head, 3)
    shutil.rmtree(config.reports_dir)
    config.reports_dir.write_text("")  # reports/ unusable, as a read-only one would be
    with pytest.raises(BootFailed) as info:
        boot(config)
    assert "the report could not be written" in info.value.message
    assert str(config.reports_dir) in info.value.message
    config.reports_dir.unlink()  # the cause fixed, the next boot works and takes writes
    result = boot_once(config)
    assert result.report.verdict == "recovered" and result.read_only is None


def test_a_failed_boot_reports_where_the_log_ends(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_blocks(config, boot_once(config).head, 5, clean=False)  # seqs 1..6
    with open(list_segments(config.log_dir)[-1].path, "ab") as fh:
        fh.write(b'{"seq":7,')  # a torn tail to cut ...
    config.quarantine_dir.write_text("")  # ... where it cannot be kept: the boot fails
    with pytest.raises(BootFailed) as info:
        boot(config)
    report = read_report(Path(info.value.params["report"]))
    assert report.verdict == "failed" and report.lines_scanned > 0
    assert "log ends at seq 6" in render_summary(report), render_summary(report)


def test_listing_reports_survives_reports_pruned_meanwhile(tmp_path: Path) -> None:
    """The verifier prunes its old reports while a client lists them (ListReports): a file gone
    between the directory read and its stat is skipped, not an InternalError (found by the fuzz
    stress run). A real race: one thread creates and removes report files as fast as it can."""
    reports = tmp_path / "reports"
    reports.mkdir()
    for n in range(50):
        (reports / f"boot-{n:04d}.json").write_text("{}")
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            path = reports / f"verify-{n % 20:04d}.json"
            path.write_text("{}")
            path.unlink()
            n += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(3000):
            listed = list_reports(reports, ("boot", "verify"))
            assert sum(p.name.startswith("boot") for p in listed) == 50
    finally:
        stop.set()
        thread.join()
