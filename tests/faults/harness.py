"""Running workloads on the simulated disk, and checking every crash state they can leave.

A *workload* runs the real boot and the real engine with `SimDisk` as their `FileOps`; every
acknowledgement is recorded with the number of file operations done at that moment (a crash
point at or after it must keep the event). A *trial* materialises one crash state (log files
from the model, the state database from a snapshot or missing), boots it with the real file
operations, opens the engine, writes once more, and checks Rule 1 and Rule 2.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from tests.faults.simdisk import (
    CrashPoint,
    CrashState,
    SimDisk,
    Tally,
    crash_states,
    durable_state,
)
from tests.helpers import dump_state, replay_dump
from timelined import commands as cmd
from timelined.auditlog.fileops import FileOps, Handle, OsFileOps
from timelined.auditlog.reader import read_records
from timelined.auditlog.record import check_frame
from timelined.auditlog.writer import LogHead
from timelined.config import Config, FsyncMode, LogConfig, default_config
from timelined.events import Record
from timelined.recovery.boot import boot
from timelined.recovery.marker import make_marker, write_marker
from timelined.recovery.report import read_report
from timelined.writer.engine import Engine

Workload = Callable[[Engine], Awaitable[None]]


@contextlib.contextmanager
def fast_dir(prefix: str) -> Iterator[Path]:
    """A scratch directory on tmpfs when there is one (real fsyncs there cost nothing)."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_config(
    state_dir: Path,
    segment_bytes: int,
    fsync: FsyncMode = "always",
    interval_ms: int = 50,
    reserve_bytes: int = 2048,
) -> Config:
    # A reservation of a few sectors: the crash states of space reserved ahead stay few.
    log = LogConfig(
        fsync=fsync,
        segment_bytes=segment_bytes,
        fsync_interval_ms=interval_ms,
        reserve_bytes=reserve_bytes,
    )
    return default_config(state_dir, log=log)


def text(i: int, size: int = 700) -> str:
    """Block content long enough that one line spans 512-byte sectors."""
    unit = f"message {i}: the quick brown fox jumps over the lazy dog — ünïcödé ✓. "
    return (unit * (size // len(unit) + 1))[:size]


@dataclass
class Recording:
    """What a workload run on the simulated disk leaves for the trials."""

    config: Config
    sim: SimDisk
    acked: list[tuple[int, int, str]] = field(default_factory=list)  # (ops done, seq, hash)

    def acked_at(self, point: CrashPoint) -> list[tuple[int, str]]:
        """What must survive a crash at `point`: with fsync "always", every acknowledged event;
        otherwise (a power cut may lose the last interval) every event already fsynced."""
        if self.config.log.fsync == "always":
            return [(seq, h) for done, seq, h in self.acked if done <= point.index]
        return durable_events(point)


def durable_events(point: CrashPoint) -> list[tuple[int, str]]:
    """(seq, hash) of every whole line in the fsynced bytes of the log's durable segments."""
    state = durable_state(point)
    found: list[tuple[int, str]] = []
    for path in sorted(p for p in state.files if p.startswith("log/") and p.endswith(".jsonl")):
        for line in state.files[path].split(b"\n")[:-1]:
            seq, _, digest = check_frame(line)
            found.append((seq, digest.decode()))
    return found


async def run_engine(
    config: Config,
    fileops: FileOps,
    head: LogHead | None,
    workload: Workload,
    on_commit: Callable[[list[Record], list[bytes]], None] | None = None,
) -> LogHead | None:
    """Open the engine, run the workload, close; returns the head a marker would record."""
    async with Engine.open(config, fileops=fileops, head=head) as engine:
        if on_commit is not None:
            engine.subscribe(on_commit)
        await workload(engine)
    if engine.fatal is not None or engine.writer is None:
        return None
    return engine.writer.head


def write_clean_marker(config: Config, head: LogHead, fileops: FileOps) -> None:
    """What the daemon's clean stop does (lifecycle → mark_clean), through `fileops`."""
    segments = sorted(config.log_dir.glob("*.jsonl")) if config.log_dir.exists() else []
    name = segments[-1].name if segments else ""
    write_marker(
        config.marker_path,
        make_marker(head.seq, head.hash, name, head.end_offset),
        fileops,
    )


def prepare(config: Config, workload: Workload, *, clean: bool) -> None:
    """Set up a state directory with the real file operations (the history before the test)."""
    result = boot(config)
    try:
        head = anyio.run(run_engine, config, OsFileOps(), result.head, workload)
        if clean and head is not None:
            write_clean_marker(config, head, OsFileOps())
    finally:
        result.lock.release()


def record(
    config: Config,
    workload: Workload,
    *,
    clean: bool,
    sim_factory: Callable[[Path, Path], SimDisk] | None = None,
) -> Recording:
    """Boot and run `workload` on a SimDisk over config.state_dir; optionally stop cleanly."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    factory = sim_factory or (lambda root, db: SimDisk(root, db_path=db))
    sim = factory(config.state_dir, config.state_db)
    rec = Recording(config, sim)
    if config.log_dir.exists():  # the history before the test was acknowledged before it
        rec.acked.extend((0, r.seq, r.hash) for r in read_records(config.log_dir))

    def on_commit(records: list[Record], _lines: list[bytes]) -> None:
        done = sim.ops_done
        rec.acked.extend((done, r.seq, r.hash) for r in records)

    result = boot(config, fileops=sim)
    try:
        head = anyio.run(run_engine, config, sim, result.head, workload, on_commit)
        if clean and head is not None:
            write_clean_marker(config, head, sim)
    finally:
        result.lock.release()
        sim.finish()
    return rec


class FullDisk(SimDisk):
    """A SimDisk whose `nth` write to a log segment takes `room` bytes, the next none; with
    `kind="reserve"`, whose `nth` reservation grows the file by `room` bytes and then fails
    (as a posix_fallocate that ran out of space part way), and so does the writer's retry of
    the batch's own size; the next batch's succeeds."""

    def __init__(self, root: Path, db: Path, nth: int, room: int, kind: str = "write") -> None:
        super().__init__(root, db_path=db)
        self.nth, self.room, self.kind = nth, room, kind
        self.segment_writes = self.reservations = 0
        self.full = False
        self.refused_length = 0  # the failed reservation's: a shorter one next is its retry

    def _short(self, handle: Handle, data: bytes | memoryview) -> int | None:
        """How much of `data` the disk takes, or None for all of it; raises when full."""
        opened = self._open.get(handle)
        if self.kind != "write" or opened is None or not opened.rel.endswith(".jsonl"):
            return None
        if self.full:
            self.full = False  # space comes back for the next batch
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.segment_writes += 1
        if self.segment_writes == self.nth and self.room < len(data):
            self.full = True
            return self.room
        return None

    def write(self, handle: Handle, data: bytes | memoryview) -> int:
        n = self._short(handle, data)
        return super().write(handle, data if n is None else memoryview(data)[:n])

    def pwrite(self, handle: Handle, data: bytes | memoryview, offset: int) -> int:
        n = self._short(handle, data)
        return super().pwrite(handle, data if n is None else memoryview(data)[:n], offset)

    def reserve(self, handle: Handle, offset: int, length: int) -> None:
        opened = self._open.get(handle)
        if self.kind == "reserve" and opened is not None and opened.rel.endswith(".jsonl"):
            self.reservations += 1
            retry, self.refused_length = length < self.refused_length, 0
            if self.reservations == self.nth or retry:
                if not retry:
                    self.refused_length = length
                    if self.room:
                        super().reserve(handle, self.fstat_size(handle), self.room)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().reserve(handle, offset, length)


# --- trials ---------------------------------------------------------------------------------------


def db_variants(
    rec: Recording, point: CrashPoint, *, older: bool
) -> list[tuple[str, bytes | None]]:
    """The state database a crash may leave: as of the last COMMIT, older, or missing."""
    snaps = rec.sim.db_snapshots
    out: list[tuple[str, bytes | None]] = []
    if point.db is not None:
        out.append(("db-latest", snaps[point.db]))
        if older and point.db >= 2:
            out.append(("db-older", snaps[point.db - 2]))
    out.append(("db-missing", None))
    return out


def check_crash_state(
    rec: Recording,
    point: CrashPoint,
    state: CrashState,
    db: bytes | None,
    trial_dir: Path,
    scratch: Path,
) -> tuple[list[str], int, int, str]:
    """Boot one crash state and check it; returns (problems, acked checked, lost, verdict)."""
    shutil.rmtree(trial_dir, ignore_errors=True)
    state.materialise(trial_dir)
    if db is not None:
        (trial_dir / "state.db").write_bytes(db)
    log = rec.config.log
    config = make_config(
        trial_dir, log.segment_bytes, log.fsync, log.fsync_interval_ms, log.reserve_bytes
    )
    acked = rec.acked_at(point)
    # Only a log that may lose its last interval can leave a state ahead of it (rebuilt).
    verdicts = ("clean", "recovered") + (("recovered_with_loss",) if log.fsync != "always" else ())
    problems: list[str] = []
    try:
        result = boot(config)
    except Exception as exc:  # a crash state of a correct implementation always boots
        return [f"boot raised {type(exc).__name__}: {exc}"], len(acked), 0, "exception"
    try:
        report = result.report
        verdict = report.verdict
        if report.verdict not in verdicts:
            problems.append(f"verdict {report.verdict}: {report.error or report.damage}")
        if result.read_only is not None or result.head is None:
            problems.append(f"read-only after boot: {result.read_only}")
        if report.path is None or not Path(report.path).exists():
            problems.append("no boot record written")
        else:
            on_disk = read_report(Path(report.path))
            if on_disk.id != report.id:
                problems.append("the boot record on disk is not this boot's")
            if (
                on_disk.recovery_report is not None
                and not (config.reports_dir / f"{on_disk.recovery_report}.json").exists()
            ):
                problems.append("the recovery report is missing")
        for torn in report.torn:
            kept = Path(torn.quarantined_to)
            if not kept.exists() or kept.stat().st_size != torn.length:
                problems.append(f"torn tail not kept in quarantine: {torn}")
        if not problems:

            async def write_once(engine: Engine) -> None:
                await engine.submit(cmd.CreateConversation(name="after the crash"))

            try:
                anyio.run(run_engine, config, OsFileOps(), result.head, write_once)
            except Exception as exc:
                problems.append(f"the engine did not resume writing: {type(exc).__name__}: {exc}")
    finally:
        result.lock.release()
    try:
        in_log = {r.seq: r.hash for r in read_records(config.log_dir)}
    except Exception as exc:
        problems.append(f"the log cannot be read after recovery: {exc}")
        in_log = {}
    lost = [seq for seq, h in acked if in_log.get(seq) != h]
    if lost:
        problems.append(f"acknowledged events lost: seqs {lost}")
    try:
        if dump_state(config.state_db) != replay_dump(config.log_dir, scratch):
            problems.append("state != replay of the log")
    except Exception as exc:
        problems.append(f"state/replay comparison failed: {type(exc).__name__}: {exc}")
    return problems, len(acked), len(lost), verdict


def check_recording(
    rec: Recording,
    work: Path,
    tally: Tally,
    *,
    older: bool = True,
    points: list[CrashPoint] | None = None,
) -> None:
    """Every crash state of every crash point, with each database variant, de-duplicated.

    Two crash points that leave the same files and the same database are one trial, checked
    against the larger acknowledged set (the later point's: acknowledgements only grow).
    """
    chosen = points if points is not None else rec.sim.points
    trials: dict[tuple[str, str], tuple[CrashPoint, CrashState, str, bytes | None]] = {}
    for point in chosen:
        tally.points += 1
        for state in crash_states(point):
            tally.states += 1
            for dbname, db in db_variants(rec, point, older=older):
                dbkey = "none" if db is None else str(hash(db))
                trials[(state.key, dbkey)] = (point, state, dbname, db)
    for point, state, dbname, db in trials.values():
        problems, checked, lost, verdict = check_crash_state(
            rec, point, state, db, work / "trial", work / "replay.db"
        )
        tally.verdicts[verdict] += 1
        tally.trials += 1
        tally.acknowledged_checked += checked
        tally.lost += lost
        if problems:
            tally.failed_boots += 1
            if len(tally.failures) < 20:
                tally.failures.append(
                    f"{point.describe()} / {state.name} / {dbname}: " + "; ".join(problems)
                )


# --- workloads ------------------------------------------------------------------------------------


async def appends(engine: Engine, context_id: str, start: int, count: int) -> None:
    """`count` appends submitted together: the writer takes them as one batch."""
    async with anyio.create_task_group() as tg:
        for i in range(start, start + count):
            tg.start_soon(
                engine.submit,
                cmd.AppendBlock(context_id=context_id, role="user", content=text(i)),
            )


async def conversation_workload(engine: Engine, *, rounds: int = 1, batch: int = 3) -> None:
    """create, append, spawn, append in the sidebar, a concurrent batch, merge, append."""
    for r in range(rounds):
        conv = await engine.submit(cmd.CreateConversation(name=f"conversation {r}"))
        root = conv.root_context_id
        await engine.submit(cmd.AppendBlock(context_id=root, role="user", content=text(r)))
        side = await engine.submit(
            cmd.SpawnSidebar(parent_id=root, reason="look something up", inherit_last=1)
        )
        await engine.submit(cmd.AppendBlock(context_id=side.id, role="assistant", content="hm"))
        await appends(engine, side.id, 100 * r, batch)
        await engine.submit(cmd.MergeContext(id=side.id, summary="found it"))
        await engine.submit(
            cmd.AppendBlock(context_id=root, role="assistant", content=text(r + 50, 300))
        )
