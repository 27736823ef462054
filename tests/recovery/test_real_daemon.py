"""The real daemon under real signals: kill -9 at random moments, and SIGTERM under load.

Writers are 16 threads, each with its own connection, appending blocks with client-chosen ids
and recording the id only once the reply arrived (acknowledged). After every restart every
acknowledged block must be there, the state must equal a replay of the log, and the boot must
have written the report its stop calls for.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.daemon.harness import DaemonProcess, short_tempdir
from tests.helpers import dump_state, replay_dump
from timelined.recovery.report import list_reports, read_report
from timelined.varlink.client import Connection
from timelined.varlink.errors import VarlinkError

WRITERS = 16
ROUNDS = int(os.environ.get("TIMELINED_KILL9_ROUNDS", "20"))


class Writers:
    """`count` threads (16) appending until stopped or until their connection dies."""

    def __init__(
        self, socket_path: Path, context_id: str, round_no: int, count: int = WRITERS
    ) -> None:
        self.socket_path = socket_path
        self.context_id = context_id
        self.round_no = round_no
        self.acked: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(count)]

    def _run(self, n: int) -> None:
        try:
            conn = Connection.open(self.socket_path, timeout=10)
        except VarlinkError:
            return
        i = 0
        try:
            while not self.stop.is_set():
                block_id = f"r{self.round_no}-w{n}-{i}"
                try:
                    conn.call(
                        "io.timelined.Timeline.AppendBlock",
                        {
                            "context_id": self.context_id,
                            "role": "user",
                            "content": block_id,
                            "id": block_id,
                        },
                    )
                except (VarlinkError, OSError):
                    # The daemon died, or is stopping and answered ShuttingDown (the raw
                    # connection raises the library's VarlinkError): this write is not
                    # acknowledged.
                    return
                with self.lock:
                    self.acked.append(block_id)
                i += 1
        finally:
            conn.close()

    def wait_acked(self, n: int, timeout: float = 30.0) -> None:
        """Wait until `n` appends were acknowledged: a fixed sleep may see none of them on a
        loaded machine, where the threads take longer to connect and get their first replies."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.acked) >= n:
                    return
            assert time.monotonic() < deadline, f"only {len(self.acked)} of {n} acknowledged"
            time.sleep(0.02)

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.fixture
def base() -> Iterator[Path]:
    with short_tempdir("tlk") as path:
        yield path


def stored_ids(daemon: DaemonProcess, ids: list[str]) -> set[str]:
    import sqlite3

    conn = sqlite3.connect(f"file:{daemon.state_dir / 'state.db'}?mode=ro", uri=True)
    try:
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found |= {
                r[0] for r in conn.execute(f"SELECT id FROM blocks WHERE id IN ({marks})", chunk)
            }
        return found
    finally:
        conn.close()


def newest_boot(daemon: DaemonProcess):  # type: ignore[no-untyped-def]
    reports = [p for p in list_reports(daemon.state_dir / "reports") if p.name.startswith("boot-")]
    return read_report(reports[0])


def create_root(daemon: DaemonProcess) -> str:
    conn = Connection.open(daemon.socket_path, timeout=10)
    try:
        reply = conn.call("io.timelined.Timeline.CreateConversation", {"name": "torture"})
    finally:
        conn.close()
    root: str = reply["conversation"]["root_context_id"]
    return root


@dataclass
class Kill9Result:
    """What a torture run saw; `problems` says what went wrong, round by round."""

    trials: int = 0
    acknowledged_checked: int = 0
    lost: int = 0
    failed_boots: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"kill9: trials={self.trials} acknowledged_checked={self.acknowledged_checked} "
            f"lost={self.lost} failed_boots={self.failed_boots}"
        )


def kill9_torture(
    base: Path, scratch: Path, rounds: int, seed: int, writers: int = WRITERS
) -> Kill9Result:
    """`rounds` times: `writers` (16) appending, SIGKILL at a random moment, restart; after
    every restart the boot must be a recovery and every block acknowledged so far must be
    there. At the end: a clean stop, and the state must equal a replay of the log. (Shared
    with tests/stress/test_kill9_stress.py, which runs it for ROUNDS rounds.)"""
    rng = random.Random(seed)
    result = Kill9Result()
    daemon = DaemonProcess(base).start()
    try:
        root = create_root(daemon)
        acked: list[str] = []
        lost: set[str] = set()
        for round_no in range(rounds):
            with Writers(daemon.socket_path, root, round_no, writers) as appending:
                time.sleep(rng.uniform(0.05, 0.4))
                daemon.kill()  # SIGKILL at a random moment under 16 concurrent writers
            acked += appending.acked
            result.trials += 1
            try:
                daemon.start()
            except RuntimeError as exc:
                result.failed_boots += 1
                result.problems.append(f"round {round_no}: no boot: {exc}")
                break
            report = newest_boot(daemon)
            if (report.verdict, report.kind, report.marker_found) != (
                "recovered",
                "recovery",
                False,
            ):
                result.failed_boots += 1
                result.problems.append(f"round {round_no}: boot {report}")
            missing = set(acked) - stored_ids(daemon, acked)
            if missing - lost:
                result.problems.append(
                    f"round {round_no}: {len(missing - lost)} acknowledged blocks lost"
                )
            lost |= missing
            result.lost = len(lost)
            result.acknowledged_checked = len(acked)
        if daemon.proc is not None:
            code = daemon.stop()
            if code != 0:
                result.problems.append(f"the last stop exited {code}")
            elif dump_state(daemon.state_dir / "state.db") != replay_dump(
                daemon.state_dir / "log", scratch / "replay.db"
            ):
                result.problems.append("the state differs from a replay of the log")
    finally:
        daemon.kill()
    return result


def test_kill9_torture_loses_nothing_acknowledged(base: Path, tmp_path: Path) -> None:
    result = kill9_torture(base, tmp_path, ROUNDS, int(os.environ.get("TIMELINED_SEED", "9")))
    assert not result.problems, "\n".join(result.problems)
    assert result.lost == 0 and result.failed_boots == 0
    assert result.acknowledged_checked > ROUNDS * WRITERS, "the writers must have made progress"


def test_kill9_at_one_connection_loses_nothing_acknowledged(base: Path, tmp_path: Path) -> None:
    """One writer: every batch is one append, written and fsynced by the event loop itself
    (writer/engine.py, `_run_batch_on_loop`), so the kills land in that path."""
    rounds = max(4, ROUNDS // 4)
    result = kill9_torture(base, tmp_path, rounds, int(os.environ.get("TIMELINED_SEED", "9")), 1)
    assert not result.problems, "\n".join(result.problems)
    assert result.lost == 0 and result.failed_boots == 0
    assert result.acknowledged_checked > rounds, "the writer must have made progress"
    # The path the kills were aimed at is the one that ran: one writer's appends are written by
    # the event loop (the disk quick enough: under 1 ms a write).
    daemon = DaemonProcess(base).start()
    try:
        root = create_root(daemon)
        with Writers(daemon.socket_path, root, rounds, 1) as one:
            time.sleep(0.3)
            one.wait_acked(50)  # enough appends for some to be quick even on a loaded disk
        conn = Connection.open(daemon.socket_path, timeout=10)
        try:
            metrics = conn.call("io.timelined.Admin.GetMetrics", {})["text"]
        finally:
            conn.close()
        inline = next(
            float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("timelined_writer_inline_writes_total ")
        )
        assert inline > 0
    finally:
        daemon.kill()


def test_sigterm_under_load_is_a_clean_stop(base: Path, tmp_path: Path) -> None:
    daemon = DaemonProcess(base).start()
    root = create_root(daemon)
    with Writers(daemon.socket_path, root, 0) as writers:
        time.sleep(0.5)
        writers.wait_acked(WRITERS + 1)  # the stop comes under load, however slow the machine
        daemon.signal(signal.SIGTERM)  # in-flight commands finish, then the marker
        assert daemon.proc is not None
        code = daemon.proc.wait(30)
        daemon.proc = None
    assert code == 0, daemon.log()
    assert (daemon.state_dir / "clean-shutdown").exists(), "the marker was written"
    acked = writers.acked
    assert len(acked) > WRITERS
    daemon.start()
    report = newest_boot(daemon)
    assert (report.verdict, report.fast_path, report.lines_scanned) == ("clean", True, 0)
    assert set(acked) <= stored_ids(daemon, acked)
    assert daemon.stop() == 0
    assert dump_state(daemon.state_dir / "state.db") == replay_dump(
        daemon.state_dir / "log", tmp_path / "replay.db"
    )


def test_a_second_daemon_on_the_same_state_refuses(base: Path) -> None:
    first = DaemonProcess(base).start()
    try:
        second = DaemonProcess(base)
        second.sections["daemon"]["socket_path"] = str(base / "run2" / "tl.sock")
        second.socket_path = base / "run2" / "tl.sock"
        second.log_path = base / "second.log"
        with pytest.raises(RuntimeError, match="exited with 75"):
            second.start(timeout=15)
        assert first.proc is not None
        assert f"locked by process {first.proc.pid}" in second.log()
    finally:
        assert first.stop() == 0
