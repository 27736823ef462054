"""The Verifier's scheduling: boot run, interval, coalesced requests, on_drift = "repair",
cancellation (no child process outlives it), status and reports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio

from tests.verifier.conftest import config_for, until
from tests.verifier.test_drift import sqlite3_cli
from timelined.verifier import Verifier
from timelined.verifier.reports import list_reports, read_report
from timelined.writer.engine import Engine


def worker_children() -> list[int]:
    """Pids of this process's verifier children still alive."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if ppid == os.getpid() and b"timelined.verifier.worker" in cmdline:
            found.append(int(entry))
    return found


async def test_boot_run_then_status(small_dir: Path) -> None:
    config = config_for(small_dir, on_boot=True)
    published: list[str] = []
    async with Engine.open(config) as engine:
        verifier = Verifier(config, engine, published.append)
        assert verifier.status().state == "never"
        async with anyio.create_task_group() as tg:
            tg.start_soon(verifier.run_forever)
            await until(lambda: verifier.status().runs >= 1)
            tg.cancel_scope.cancel()
    status = verifier.status()
    latest = verifier.latest()
    assert latest is not None and latest.trigger == "boot" and latest.state == "ok"
    assert status.state == "ok" and status.last_report_id == latest.id
    assert status.events_checked == latest.snapshot_seq == engine.last_seq
    assert published[0].startswith("serving; verifying chain and state up to seq")
    assert published[-1] == f"serving on {config.socket_path}, log at seq {engine.last_seq}"
    (path,) = list_reports(config.reports_dir)
    assert read_report(path).id == latest.id
    # A new Verifier (a restarted daemon) finds the last report.
    async with Engine.open(config) as engine:
        again = Verifier(config, engine)
        assert again.latest() is not None and again.status().last_report_id == latest.id
        assert again.status().state == "never"


async def test_interval_runs(small_dir: Path) -> None:
    config = config_for(small_dir, interval_s=1)
    async with Engine.open(config) as engine:
        verifier = Verifier(config, engine)
        async with anyio.create_task_group() as tg:
            tg.start_soon(verifier.run_forever)
            await until(lambda: verifier.status().runs >= 2)
            tg.cancel_scope.cancel()
    triggers = {read_report(p).trigger for p in list_reports(config.reports_dir)}
    assert triggers == {"interval"}


async def test_requests_during_a_run_coalesce(small_dir: Path) -> None:
    config = config_for(small_dir)
    async with Engine.open(config) as engine:
        verifier = Verifier(config, engine)
        reports = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(verifier.run_forever)
            assert await verifier.verify(wait=False) is None

            async def ask() -> None:
                reports.append(await verifier.verify())

            for _ in range(5):
                tg.start_soon(ask)
            await until(lambda: len(reports) == 5, seconds=20)
            tg.cancel_scope.cancel()
    # The first request's run, then at most one more for all the requests made during it.
    assert 1 <= verifier.status().runs <= 2
    assert all(r is not None and r.state == "ok" for r in reports)


async def test_without_run_forever_verify_runs_inline(small_dir: Path) -> None:
    config = config_for(small_dir)
    async with Engine.open(config) as engine:
        verifier = Verifier(config, engine)
        report = await verifier.verify()
        assert report is not None and report.state == "ok" and report.trigger == "request"


async def test_on_drift_repair(small_dir: Path) -> None:
    config = config_for(small_dir, on_drift="repair")
    async with Engine.open(config) as engine:
        verifier = Verifier(config, engine)
        async with anyio.create_task_group() as tg:
            tg.start_soon(verifier.run_forever)
            await anyio.sleep(0.3)
            await anyio.to_thread.run_sync(
                sqlite3_cli,
                config.state_db,
                "UPDATE blocks SET role = 'x' WHERE seq = (SELECT min(seq) FROM blocks)",
            )

            def repaired_and_verified() -> bool:
                latest = verifier.latest()
                return verifier.status().repairs == 1 and (
                    latest is not None and latest.trigger == "repair"
                )

            await until(repaired_and_verified, seconds=15)
            tg.cancel_scope.cancel()
    status = verifier.status()
    assert status.drift_runs == 1 and status.state == "ok", status
    assert list(config.reports_dir.glob("repair-*.json"))
    assert list(config.quarantine_dir.glob("state-*.db"))


async def test_cancelling_a_run_kills_its_children(large_dir: Path) -> None:
    config = config_for(large_dir, segment_bytes=1 << 20)
    async with Engine.open(config) as engine:
        verifier = Verifier(config, engine, processes=True)
        with anyio.move_on_after(0.6):
            await verifier.verify()
        assert verifier.status().state != "running"
    assert worker_children() == []
    assert list((large_dir / "tmp").glob("verify-*")) == []  # the child cleaned up as it stopped


def test_offline_cli_entry(small_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "timelined.verifier", "--state-dir", str(small_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "result: OK" in done.stdout
