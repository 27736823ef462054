"""I/O errors at every step: the N-th write, fsync, rename or directory fsync fails (EIO, ENOSPC).

- A failed fsync (file or directory) is fatal: the batch's callers get FatalStorageError, nothing
  of it is acknowledged, every later write is refused, `on_fatal` is called once; the next boot,
  with the real file operations, recovers everything acknowledged and the state is the replay.
- A failed write (ENOSPC → DiskFull, EIO → StorageError) refuses the batch: the log is byte-for-
  byte what it was before it, reads keep working, and the next write succeeds once the fault is
  gone. Nothing refused is ever found in the log.
- The state database failing (its write lock held by another process, or its commit refused)
  makes the engine fatal without acknowledging; the next boot rolls the log forward.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.faults.faultops import FaultOps
from tests.faults.harness import fast_dir, make_config, prepare, text
from tests.helpers import dump_state, replay_dump
from timelined import commands as cmd
from timelined.auditlog.reader import read_records
from timelined.config import Config
from timelined.errors import BootFailed, DiskFull, FatalStorageError, StorageError, TimelinedError
from timelined.recovery.boot import boot
from timelined.recovery.marker import make_marker, write_marker
from timelined.recovery.report import read_report
from timelined.state import queries as q
from timelined.writer.engine import Engine

SEGMENT_BYTES = 2048
STEPS = 8
ERRNOS = {"EIO": errno.EIO, "ENOSPC": errno.ENOSPC}


def log_bytes(log_dir: Path) -> dict[str, bytes]:
    """Every file's bytes, the last segment's without the space reserved past its records (a
    NUL run at its end, which the undo of a refused batch cuts with the batch's bytes)."""
    if not log_dir.exists():
        return {}
    found = {p.name: p.read_bytes() for p in sorted(log_dir.iterdir())}
    if found:
        last = max(found)
        found[last] = found[last].rstrip(b"\0")
    return found


def all_log_text(log_dir: Path) -> bytes:
    return b"".join(log_bytes(log_dir).values())


async def history(engine: Engine) -> None:
    conv = await engine.submit(cmd.CreateConversation(name="history"))
    for i in range(3):
        await engine.submit(
            cmd.AppendBlock(context_id=conv.root_context_id, role="user", content=text(i, 300))
        )


@dataclass
class Session:
    """What happened in one run on the faulty file operations."""

    acked: list[tuple[int, str]] = field(default_factory=list)  # committed (seq, hash)
    accepted: list[str] = field(default_factory=list)  # tags whose submit returned
    refused: list[tuple[str, TimelinedError]] = field(default_factory=list)  # tags that raised
    errors: list[TimelinedError] = field(default_factory=list)  # every error, in order
    steps_accepted: list[int] = field(default_factory=list)
    steps_refused: list[int] = field(default_factory=list)  # DiskFull / StorageError
    on_fatal: list[FatalStorageError] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    writes_per_step: list[int] = field(default_factory=list)


def expected_error(kind: str, err: int) -> type[TimelinedError]:
    if kind in ("fsync", "fsync_dir", "ftruncate", "unlink"):
        return FatalStorageError
    return DiskFull if err == errno.ENOSPC else StorageError


async def steps(engine: Engine, config: Config, ops: FaultOps, s: Session) -> None:
    """Sequential commands and one batch of three; after each, the rules of the fault."""
    root: str | None = None
    for i in range(STEPS):
        if engine.fatal is not None:
            try:
                await engine.submit(cmd.CreateConversation(name=f"<late-{i}>"))
                s.problems.append("a write was accepted after a fatal error")
            except FatalStorageError:
                pass
            return
        if root is None:
            commands: list[tuple[str, cmd.Command]] = [
                (f"<c-{i}>", cmd.CreateConversation(name=f"<c-{i}>"))
            ]
        else:
            n = 3 if i == 4 else 1
            commands = [
                (tag, cmd.AppendBlock(context_id=root, role="user", content=tag + text(i)))
                for tag in (f"<step-{i}.{k}>" for k in range(n))
            ]
        before = log_bytes(config.log_dir)
        writes = ops.calls["write"]
        outcomes: list[Any] = [None] * len(commands)

        async def one(k: int, command: cmd.Command, outcomes: list[Any] = outcomes) -> None:
            try:
                outcomes[k] = await engine.submit(command)
            except TimelinedError as exc:
                outcomes[k] = exc

        async with anyio.create_task_group() as tg:
            for k, (_, command) in enumerate(commands):
                tg.start_soon(one, k, command)
        s.writes_per_step.append(ops.calls["write"] - writes)
        kinds = {type(o) for o in outcomes if isinstance(o, TimelinedError)}
        if kinds and len(kinds) + (any(not isinstance(o, Exception) for o in outcomes)) > 1:
            s.problems.append(f"step {i}: one batch, mixed outcomes {outcomes}")
        for (tag, command), outcome in zip(commands, outcomes, strict=True):
            if isinstance(outcome, TimelinedError):
                s.refused.append((tag, outcome))
                s.errors.append(outcome)
            else:
                s.accepted.append(tag)
                if isinstance(command, cmd.CreateConversation):
                    root = outcome.root_context_id
        if not kinds:
            s.steps_accepted.append(i)
        if kinds & {DiskFull, StorageError}:
            s.steps_refused.append(i)
            if log_bytes(config.log_dir) != before:
                s.problems.append(f"step {i}: a refused batch changed the log")
            convs, _ = await engine.read(
                q.list_conversations, include_archived=True, limit=10, after=None
            )  # reads keep working while writes are refused
            if root is not None and not convs:
                s.problems.append(f"step {i}: reads lost the conversation")
        if FatalStorageError in kinds and (engine.fatal is None or len(s.on_fatal) != 1):
            s.problems.append(f"step {i}: fatal error without engine.fatal / on_fatal once")


def run_faulty(config: Config, ops: FaultOps, s: Session) -> None:
    """Boot, engine, steps, clean stop (marker), every file operation through `ops`."""
    try:
        booted = boot(config, fileops=ops)
    except BootFailed as exc:
        s.errors.append(exc)
        report = exc.params.get("report")
        if not report or read_report(Path(report)).verdict != "failed":
            s.problems.append("a failed boot wrote no 'failed' report")
        return
    try:

        async def session() -> Engine:
            async with Engine.open(config, fileops=ops, head=booted.head) as engine:
                engine.on_fatal = s.on_fatal.append
                engine.subscribe(lambda recs, _lines: s.acked.extend((r.seq, r.hash) for r in recs))
                await steps(engine, config, ops, s)
            return engine

        try:
            engine = anyio.run(session)
        except (StorageError, DiskFull, FatalStorageError) as exc:  # the writer could not open
            s.errors.append(exc)
            return
        if engine.fatal is None and engine.writer is not None:
            head = engine.writer.head
            segs = sorted(config.log_dir.glob("*.jsonl"))
            try:
                write_marker(
                    config.marker_path,
                    make_marker(head.seq, head.hash, segs[-1].name, head.end_offset),
                    ops,
                )
            except OSError:
                pass  # the daemon exits non-zero; the next boot takes the unclean path
    finally:
        booted.lock.release()


def recover_and_check(
    config: Config, baseline: dict[int, str], s: Session, scratch: Path
) -> list[str]:
    """Boot with the real file operations and check Rule 1, Rule 2 and 'nothing half-written'."""
    problems = list(s.problems)
    result = boot(config)
    try:
        if result.report.verdict not in ("clean", "recovered") or result.head is None:
            problems.append(f"recovery verdict {result.report.verdict}: {result.report.error}")
            return problems

        async def again(engine: Engine) -> None:
            await engine.submit(cmd.CreateConversation(name="after recovery"))

        async def reopen() -> None:
            async with Engine.open(config, head=result.head) as engine:
                await again(engine)

        anyio.run(reopen)
    finally:
        result.lock.release()
    in_log = {r.seq: r.hash for r in read_records(config.log_dir)}
    lost = [seq for seq, h in [*baseline.items(), *s.acked] if in_log.get(seq) != h]
    if lost:
        problems.append(f"acknowledged events lost: {lost}")
    everything = all_log_text(config.log_dir)
    missing = [tag for tag in s.accepted if tag.encode() not in everything]
    if missing:
        problems.append(f"accepted commands missing from the log: {missing}")
    # A batch whose fsync failed may be in the log (written, never acknowledged); a refused
    # write never is.
    kept = [
        tag
        for tag, exc in s.refused
        if not isinstance(exc, FatalStorageError) and tag.encode() in everything
    ]
    if kept:
        problems.append(f"refused commands found in the log: {kept}")
    if dump_state(config.state_db) != replay_dump(config.log_dir, scratch):
        problems.append("state != replay of the log")
    return problems


@pytest.fixture(scope="module")
def template() -> Any:
    """A state directory with some history, stopped cleanly (the marker is there)."""
    with fast_dir("tl-io-template-") as work:
        config = make_config(work / "state", SEGMENT_BYTES)
        prepare(config, history, clean=True)
        yield config.state_dir


def fresh_copy(template: Path, work: Path) -> tuple[Config, dict[int, str]]:
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    shutil.copytree(template, state)
    config = make_config(state, SEGMENT_BYTES)
    return config, {r.seq: r.hash for r in read_records(config.log_dir)}


def test_the_session_batches_three_commands_in_one_write(template: Path) -> None:
    with fast_dir("tl-io-") as work:
        config, baseline = fresh_copy(template, work)
        s = Session()
        run_faulty(config, FaultOps(), s)
        assert not s.errors and not s.problems
        assert s.writes_per_step == [1] * STEPS, "each step is one batch: one write"
        assert not recover_and_check(config, baseline, s, work / "replay.db")


@pytest.mark.parametrize("err", ["EIO", "ENOSPC"])
@pytest.mark.parametrize("kind", ["write", "fsync", "fsync_dir", "rename", "any"])
def test_the_nth_operation_fails(template: Path, kind: str, err: str) -> None:
    """N = 1, 2, … until the fault no longer fires: every run recovers, nothing half-written."""
    code = ERRNOS[err]
    failures: list[str] = []
    fired_runs = 0
    with fast_dir("tl-io-") as work:
        n = 0
        while True:
            n += 1
            config, baseline = fresh_copy(template, work)
            ops = FaultOps(kind, n, code)
            s = Session()
            run_faulty(config, ops, s)
            if not ops.fired:
                break  # past the last operation of this kind
            fired_runs += 1
            fired_kind = ops.fired[-1].split(" ", 1)[0]
            if fired_kind == "short":
                fired_kind = "write"
            in_engine = [e for e in s.errors if not isinstance(e, BootFailed)]
            if in_engine and not s.problems:
                want = expected_error(fired_kind, code)
                if not isinstance(in_engine[0], want):
                    s.problems.append(f"{fired_kind} failed: got {in_engine[0]!r}, want {want}")
                for r in s.steps_refused:
                    if r < STEPS - 1 and not any(a > r for a in s.steps_accepted):
                        s.problems.append(f"writes did not resume after the refusal at step {r}")
            problems = recover_and_check(config, baseline, s, work / "replay.db")
            if problems:
                failures.append(f"{kind} #{n} ({ops.fired}): " + "; ".join(problems))
    print(f"io-errors: kind={kind} err={err} runs={fired_runs} failures={len(failures)}")
    assert fired_runs >= 1
    assert not failures, "\n".join(failures)


def boot_calls(template: Path, work: Path, kind: str) -> int:
    """How many `kind` calls a boot of the template makes (its reports' writes among them)."""
    config, _ = fresh_copy(template, work)
    ops = FaultOps()
    boot(config, fileops=ops).lock.release()
    return ops.calls[kind]


def test_fsync_failure_is_fatal_and_nothing_of_the_batch_is_acknowledged(template: Path) -> None:
    with fast_dir("tl-io-") as work:
        at_boot = boot_calls(template, work, "fsync")
        for n in (1, 3, 5):  # the engine's n-th fsync
            config, baseline = fresh_copy(template, work)
            ops = FaultOps("fsync", at_boot + n, errno.EIO)
            s = Session()
            run_faulty(config, ops, s)
            assert ops.fired and not s.problems
            assert len(s.on_fatal) == 1, "on_fatal is called exactly once"
            fatal = [e for e in s.errors if isinstance(e, FatalStorageError)]
            assert fatal and len(fatal) == len(s.errors), s.errors
            assert s.refused and all(not t.startswith("<late") for t, _ in s.refused)
            assert not config.marker_path.exists(), "a fatal stop writes no marker"
            assert not recover_and_check(config, baseline, s, work / "replay.db")


def test_disk_full_refuses_until_space_returns(template: Path) -> None:
    """A disk that stays full: every batch refused whole, reads work, writes resume after."""
    with fast_dir("tl-io-") as work:
        config, baseline = fresh_copy(template, work)
        ops = FaultOps()
        result = boot(config, fileops=ops)  # the disk fills after the boot wrote its report
        ops.arm("write", 1, errno.ENOSPC, sticky=True, partial=100)
        accepted: list[str] = []
        acked: list[tuple[int, str]] = []

        async def go() -> None:
            async with Engine.open(config, fileops=ops, head=result.head) as engine:
                engine.subscribe(lambda recs, _lines: acked.extend((r.seq, r.hash) for r in recs))
                convs, _ = await engine.read(
                    q.list_conversations, include_archived=True, limit=10, after=None
                )
                root = convs[0].root_context_id
                before = log_bytes(config.log_dir)
                for i in range(4):
                    with pytest.raises(DiskFull) as info:
                        await engine.submit(
                            cmd.AppendBlock(context_id=root, role="user", content=f"<full-{i}>")
                        )
                    assert info.value.recoverable and "no space left" in info.value.message
                    assert log_bytes(config.log_dir) == before, "nothing half-written"
                    blocks = await engine.read(q.list_blocks, root, limit=50)
                    assert len(blocks[0]) == 3, "reads keep working"
                assert engine.fatal is None and engine.stats.disk_full == 4
                ops.lift()
                res = await engine.submit(
                    cmd.AppendBlock(context_id=root, role="user", content="<space-back>")
                )
                accepted.append(res.block.id)

        try:
            anyio.run(go)
        finally:
            result.lock.release()
        assert "short write of 100 bytes" in ops.fired
        s = Session(acked=acked, accepted=["<space-back>"])
        assert not recover_and_check(config, baseline, s, work / "replay.db")
        assert b"<full-" not in all_log_text(config.log_dir)


@pytest.mark.parametrize("err", ["EIO", "ENOSPC"])
def test_boot_with_failing_operations_fails_cleanly_then_recovers(err: str) -> None:
    """A torn tail to cut at boot; the N-th operation of the boot fails: BootFailed, then OK."""
    code = ERRNOS[err]
    failures: list[str] = []
    runs = 0
    with fast_dir("tl-io-") as work:
        config = make_config(work / "tpl" / "state", SEGMENT_BYTES)
        prepare(config, history, clean=False)
        seg = sorted(config.log_dir.glob("*.jsonl"))[-1]
        with seg.open("ab") as fh:
            fh.write(b'{"seq":999,"ts":"torn')
        n = 0
        while True:
            n += 1
            target = work / "state"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(config.state_dir, target)
            cfg = make_config(target, SEGMENT_BYTES)
            baseline = {r.seq: r.hash for r in read_records(cfg.log_dir)}
            ops = FaultOps("any", n, code)
            s = Session()
            try:
                booted = boot(cfg, fileops=ops)
                booted.lock.release()
            except BootFailed as exc:
                report = exc.params.get("report")
                if not report or read_report(Path(report)).verdict != "failed":
                    s.problems.append("no 'failed' report")
            except Exception as exc:
                s.problems.append(f"boot raised {type(exc).__name__}: {exc}")
            if not ops.fired:
                break
            runs += 1
            problems = recover_and_check(cfg, baseline, s, work / "replay.db")
            torn_kept = list((target / "quarantine").glob("*.torn"))
            if not torn_kept or torn_kept[0].read_bytes() != b'{"seq":999,"ts":"torn':
                problems.append(f"the torn tail is not kept in quarantine: {torn_kept}")
            if problems:
                failures.append(f"#{n} ({ops.fired}): " + "; ".join(problems))
    print(f"io-errors: boot err={err} runs={runs} failures={len(failures)}")
    assert runs >= 5
    assert not failures, "\n".join(failures)


# --- the state database failing --------------------------------------------------------------


def _state_failure(template: Path, work: Path, inject: str) -> None:
    config, baseline = fresh_copy(template, work)
    result = boot(config)
    s = Session()
    other = sqlite3.connect(config.state_db, isolation_level=None, timeout=0.05)

    async def go() -> None:
        loop_thread, fatal_threads = threading.get_ident(), []

        went_fatal = anyio.Event()

        def on_fatal(exc: FatalStorageError) -> None:
            s.on_fatal.append(exc)
            fatal_threads.append(threading.get_ident())
            went_fatal.set()

        async with Engine.open(config, head=result.head) as engine:
            engine.on_fatal = on_fatal
            engine.subscribe(lambda recs, _lines: s.acked.extend((r.seq, r.hash) for r in recs))
            conv = await engine.submit(cmd.CreateConversation(name="<before>"))
            s.accepted.append("<before>")
            # Its rows committed (a read would ask for that too): the other connection below
            # needs the write lock the writer holds while answered rows wait for their COMMIT.
            await engine.caught_up()
            if inject == "locked":
                async with engine.paused() as conn:
                    conn.execute("PRAGMA busy_timeout = 50")
                other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            else:
                other.execute(
                    "CREATE TRIGGER inject_failure BEFORE UPDATE ON meta "
                    "BEGIN SELECT RAISE(ABORT, 'injected: the state commit fails'); END"
                )
            append = cmd.AppendBlock(context_id=conv.root_context_id, role="user", content="<x>")
            if inject == "locked":
                # BEGIN is refused: nothing was logged, nothing is answered as done.
                with pytest.raises(FatalStorageError) as info:
                    await engine.submit(append)
                s.refused.append(("<x>", info.value))
                s.errors.append(info.value)
                fatal = info.value
            else:
                # The state refuses the batch's COMMIT, which runs after the batch was logged,
                # fsynced and answered (at most COMMIT_DELAY_S later): the answer (done) is the
                # truth, the writer goes fatal.
                done = await engine.submit(append)
                s.accepted.append("<x>")
                s.acked.append((done.seq, engine.last_hash))
                with anyio.fail_after(5):  # the COMMIT runs COMMIT_DELAY_S after the answer
                    await went_fatal.wait()
                fatal = s.on_fatal[0]
                assert "state commit failed" in fatal.message
                with pytest.raises(FatalStorageError):  # a read cannot see the answered write
                    await engine.read(lambda conn: None)
            assert engine.fatal is fatal and s.on_fatal == [fatal]
            # on the event loop (the daemon's handler sets an anyio.Event), not the writer's
            assert fatal_threads == [loop_thread]
            with pytest.raises(FatalStorageError):
                await engine.submit(cmd.CreateConversation(name="<late>"))
            if inject == "locked":
                other.execute("ROLLBACK")
            else:
                other.execute("DROP TRIGGER inject_failure")  # the fault passes; restart

    try:
        anyio.run(go)
    finally:
        result.lock.release()
        other.close()
    assert not config.marker_path.exists()
    r = boot(config)
    r.lock.release()
    assert r.report.verdict == "recovered"
    if inject == "trigger":
        # The event reached the log before the state refused it: the boot rolls it forward.
        assert r.report.events_rolled_forward == 1
        assert b"<x>" in all_log_text(config.log_dir)
    else:
        assert b"<x>" not in all_log_text(config.log_dir)
    assert not recover_and_check(config, baseline, Session(acked=s.acked), work / "replay.db")


def test_state_commit_failure_is_fatal_and_the_boot_rolls_forward(template: Path) -> None:
    with fast_dir("tl-io-") as work:
        _state_failure(template, work, "trigger")


def test_state_write_lock_held_elsewhere_is_fatal_not_a_crash(template: Path) -> None:
    with fast_dir("tl-io-") as work:
        _state_failure(template, work, "locked")
