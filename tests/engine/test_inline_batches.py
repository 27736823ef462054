"""Batches of appends on the event loop (writer/engine.py, `_run_batch_on_loop`): their commands
run on the loop and only the log's write on the writer's thread, or on the loop too for a batch
of one while the log's last write was quick; other commands' batches keep the thread; the
writer's lock is held throughout."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from timelined import commands as cmd
from timelined.api.model import Conversation
from timelined.auditlog.fileops import Handle, OsFileOps
from timelined.config import LogConfig, default_config
from timelined.errors import FatalStorageError
from timelined.writer import engine as engine_module
from timelined.writer import rules
from timelined.writer.batch import Pending
from timelined.writer.engine import Engine

WRITER = "timelined-writer"
# Real fsyncs, of which a loaded machine makes some slow: the bound the engine compares them
# with is raised well above any quick one, and a slow one sleeps past it.
QUICK_S = 0.25
SLOW_S = 0.3


@pytest.fixture(autouse=True)
def _bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "INLINE_MAX_WRITE_S", QUICK_S)


class RecordingOps(OsFileOps):
    """The real file operations, noting which thread wrote the log; the next `slow_fsyncs`
    fsyncs take SLOW_S more (a slow disk)."""

    def __init__(self) -> None:
        self.writers: list[str] = []
        self.fsyncs = 0
        self.slow_fsyncs = 0
        self.hold: threading.Event | None = None  # set: writes wait for it (`held` tells)
        self.held = threading.Event()
        self.synced = threading.Event()

    def _wrote(self) -> None:
        self.writers.append(threading.current_thread().name)
        if self.hold is not None:
            self.held.set()
            self.hold.wait(10)

    def write(self, handle: Handle, data: bytes | memoryview) -> int:
        self._wrote()
        return super().write(handle, data)

    def pwrite(self, handle: Handle, data: bytes | memoryview, offset: int) -> int:
        self._wrote()  # the log writer's, into its reserved space (issue 17)
        return super().pwrite(handle, data, offset)

    def _synced(self) -> None:
        self.fsyncs += 1
        self.synced.set()
        if self.slow_fsyncs:
            self.slow_fsyncs -= 1
            time.sleep(SLOW_S)

    def fsync(self, handle: Handle) -> None:
        self._synced()
        super().fsync(handle)

    def fdatasync(self, handle: Handle) -> None:
        self._synced()  # the log writer's sync (issue 17)
        super().fdatasync(handle)


def _config(tmp_path: Path, **log: Any) -> Any:
    return default_config(tmp_path / "state", log=LogConfig(**log))


async def _root(engine: Engine) -> str:
    conv = await engine.submit(cmd.CreateConversation(name="c"))
    assert isinstance(conv, Conversation)
    return conv.root_context_id


async def _answered(pending: list[Pending]) -> None:
    """Wait until the writer has answered each (queued together: one batch), each with success."""
    for p in pending:
        done = anyio.Event()
        p.add_done_callback(done.set)
        with anyio.fail_after(10):
            await done.wait()
        assert p.error is None, p.error


def _append(ctx: str, text: str = "x") -> cmd.AppendBlock:
    return cmd.AppendBlock(context_id=ctx, role="user", content=text)


def test_appends_run_on_the_event_loop_and_other_commands_on_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = RecordingOps()
    ran: list[tuple[str, str]] = []
    real = rules.execute

    def execute(tx: Any, command: cmd.Command, now: str) -> Any:
        ran.append((type(command).__name__, threading.current_thread().name))
        return real(tx, command, now)

    monkeypatch.setattr(rules, "execute", execute)

    async def main() -> None:
        loop = threading.current_thread().name
        async with Engine.open(_config(tmp_path, fsync="always"), fileops=ops) as engine:
            ops.writers.clear()
            root = await _root(engine)
            await engine.submit(_append(root))
            # A batch of one append: run and written on the loop; anything else on the thread.
            assert ran == [("CreateConversation", WRITER), ("AppendBlock", loop)]
            assert ops.writers == [WRITER, loop]
            assert engine.stats.inline_writes == 1
            # Three queued before the writer runs: one batch, run on the loop, written on the
            # thread.
            ran.clear()
            pending = [engine.enqueue(_append(root, str(n))) for n in range(2)]
            block = cmd.NewBlock(role="user", content="y")
            pending.append(engine.enqueue(cmd.AppendBlocks(context_id=root, blocks=[block])))
            await _answered(pending)
            assert ran == [("AppendBlock", loop)] * 2 + [("AppendBlocks", loop)]
            assert ops.writers[2:] == [WRITER]
            # An append batched with another command: the whole batch on the thread.
            other = await _conv(engine)
            ran.clear()
            pending = [
                engine.enqueue(_append(root)),
                engine.enqueue(cmd.UpdateConversation(id=other, name="n")),
            ]
            await _answered(pending)
            assert ran == [("AppendBlock", WRITER), ("UpdateConversation", WRITER)]
            assert engine.stats.inline_writes == 1

    anyio.run(main)


def test_a_batch_of_more_blocks_than_loop_max_blocks_runs_on_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    real = rules.execute

    def execute(tx: Any, command: cmd.Command, now: str) -> Any:
        ran.append(threading.current_thread().name)
        return real(tx, command, now)

    monkeypatch.setattr(rules, "execute", execute)
    monkeypatch.setattr(engine_module, "LOOP_MAX_BLOCKS", 3)

    async def main() -> None:
        loop = threading.current_thread().name
        async with Engine.open(_config(tmp_path, fsync="always")) as engine:
            root = await _root(engine)
            for size, thread in ((3, loop), (4, WRITER)):
                ran.clear()
                pending = [engine.enqueue(_append(root, str(n))) for n in range(size)]
                await _answered(pending)
                assert ran == [thread] * size
            # Counted in blocks: one AppendBlocks of four is too many for the loop, too.
            for size, thread in ((3, loop), (4, WRITER)):
                ran.clear()
                blocks = [cmd.NewBlock(role="user", content=str(n)) for n in range(size)]
                await _answered([engine.enqueue(cmd.AppendBlocks(context_id=root, blocks=blocks))])
                assert ran == [thread]

    anyio.run(main)


async def _conv(engine: Engine) -> str:
    conv = await engine.submit(cmd.CreateConversation(name="other"))
    assert isinstance(conv, Conversation)
    return conv.id


def test_the_writer_holds_its_lock_while_the_thread_writes_a_batch_of_appends(
    tmp_path: Path,
) -> None:
    """A call for the writer's thread (a `paused()`, a COMMIT) waits until the batch is in the
    log: none comes between the batch's rows and its write."""
    ops = RecordingOps()

    async def main() -> None:
        async with Engine.open(_config(tmp_path, fsync="always"), fileops=ops) as engine:
            root = await _root(engine)
            ops.hold = release = threading.Event()
            pending = [engine.enqueue(_append(root, str(n))) for n in range(2)]
            await anyio.to_thread.run_sync(ops.held.wait, 10)
            order: list[str] = []

            def call() -> None:
                order.append("call")

            async with anyio.create_task_group() as tg:
                tg.start_soon(engine._on_writer_thread, call)
                await anyio.sleep(0.1)
                assert order == [] and not any(p.answered for p in pending)
                order.append("written")
                ops.hold = None
                release.set()
            assert order == ["written", "call"]
            assert all(p.answered and p.error is None for p in pending)
            assert ops.writers[-1] == WRITER

    anyio.run(main)


def test_a_slow_write_sends_the_next_batches_to_the_thread_until_one_is_quick(
    tmp_path: Path,
) -> None:
    ops = RecordingOps()

    async def main() -> None:
        loop_thread = threading.current_thread().name
        async with Engine.open(_config(tmp_path, fsync="always"), fileops=ops) as engine:
            root = await _root(engine)
            ops.writers.clear()
            ops.slow_fsyncs = 1
            for n in range(3):
                await engine.submit(_append(root, str(n)))
            # Slow on the loop; then on the thread (quick); then back on the loop.
            assert ops.writers == [loop_thread, WRITER, loop_thread]

    anyio.run(main)


def test_a_batch_of_appends_waits_while_another_call_holds_the_writer(
    tmp_path: Path,
) -> None:
    ops = RecordingOps()

    async def main() -> None:
        async with Engine.open(_config(tmp_path, fsync="always"), fileops=ops) as engine:
            root = await _root(engine)
            ops.writers.clear()
            entered, release = threading.Event(), threading.Event()

            def hold() -> None:  # a call on the writer's thread, using the write connection
                entered.set()
                release.wait(10)

            async with anyio.create_task_group() as tg:
                tg.start_soon(engine._on_writer_thread, hold)
                await anyio.to_thread.run_sync(entered.wait, 10)
                pending = engine.enqueue(_append(root))
                await anyio.sleep(0.1)
                # Not run on the loop beside the thread's call: it waits for the lock.
                assert not pending.answered and ops.writers == []
                release.set()
            await _answered([pending])
            assert ops.writers == [threading.current_thread().name]

    anyio.run(main)


def test_interval_mode_hands_the_fsync_to_the_thread_only_when_one_is_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = RecordingOps()
    calls: list[str] = []
    real = Engine._sync_if_due

    def counted(engine: Engine) -> None:
        calls.append(threading.current_thread().name)
        real(engine)

    monkeypatch.setattr(Engine, "_sync_if_due", counted)
    # The writer's idle wait ends at least every interval; keep the COMMIT and the index from
    # ending it sooner, so that each append is followed by one wait.
    monkeypatch.setattr(engine_module, "COMMIT_DELAY_S", 3600.0)
    monkeypatch.setattr(engine_module, "INDEX_DELAY_S", 3600.0)

    async def main() -> None:
        config = _config(tmp_path, fsync="interval", fsync_interval_ms=60_000)
        async with Engine.open(config, fileops=ops) as engine:
            root = await _root(engine)
            for n in range(10):
                await engine.submit(_append(root, str(n)))
            assert calls == []  # nothing due: no hop to the thread per wait
            assert ops.fsyncs == 0
        # A short interval: the unsynced lines are fsynced on the thread once it has passed.
        calls.clear()
        config = _config(tmp_path / "b", fsync="interval", fsync_interval_ms=20)
        async with Engine.open(config, fileops=ops) as engine:
            root = await _root(engine)
            await engine.submit(_append(root))
            ops.synced.clear()
            assert await anyio.to_thread.run_sync(ops.synced.wait, 5)
            assert calls and set(calls) == {WRITER}

    anyio.run(main)


async def _settled(engine: Engine) -> None:
    """Wait until the writer loop waits with no timer: everything committed and indexed."""
    with anyio.fail_after(10):
        while not engine._idle or engine._commit_due() is not None or engine._index_due():  # noqa: ASYNC110
            await anyio.sleep(0.01)


def test_a_lone_append_to_an_idle_writer_is_run_without_waking_the_writer_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_kick`: the loop round after the call, no writer loop wake-up, no batch of the loop's."""
    looped: list[int] = []
    real = Engine._run_batch_on_loop

    async def counted(engine: Engine, batch: list[Pending]) -> Any:
        looped.append(len(batch))
        return await real(engine, batch)

    monkeypatch.setattr(Engine, "_run_batch_on_loop", counted)
    # No COMMIT in the test's time: the first append after one would wake the writer loop, to
    # arm the timer of the COMMIT it makes due.
    monkeypatch.setattr(engine_module, "COMMIT_DELAY_S", 3600.0)

    async def main() -> None:
        async with Engine.open(_config(tmp_path, fsync="always"), fileops=RecordingOps()) as eng:
            root = await _root(eng)  # uncommitted: the writer loop's timer is for its COMMIT
            with anyio.fail_after(10):
                while not eng._idle:  # noqa: ASYNC110 (the writer loop's state: polled)
                    await anyio.sleep(0.01)
            wakeups = 0
            real_set = eng._wakeup.set

            def counted_set() -> None:
                nonlocal wakeups
                wakeups += 1
                real_set()

            monkeypatch.setattr(eng._wakeup, "set", counted_set)
            for n in range(5):
                await eng.submit(_append(root, str(n)))
            assert (looped, wakeups) == ([], 0)
            assert eng.stats.inline_writes == 5
            # Calls queued in one round still make one batch, the writer loop's.
            await _answered([eng.enqueue(_append(root, str(n))) for n in range(3)])
            assert looped == [3]

    anyio.run(main)


def test_a_lone_append_still_gets_its_commit_from_the_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer loop waited with no timer (nothing to commit or index); the append run beside
    it must wake it so that its COMMIT comes COMMIT_DELAY_S later without a read asking."""
    monkeypatch.setattr(engine_module, "INDEX_DELAY_S", 0.0)

    async def main() -> None:
        async with Engine.open(_config(tmp_path, fsync="always"), fileops=RecordingOps()) as eng:
            root = await _root(eng)
            await eng.submit(_append(root))
            await _settled(eng)
            await eng.submit(_append(root, "late"))
            with anyio.fail_after(10):
                while eng.committed_seq < eng.acked_seq:  # noqa: ASYNC110 (no caught_up(): no read asks)
                    await anyio.sleep(0.01)

    anyio.run(main)


def test_a_failing_fsync_of_a_lone_append_is_fatal_and_stops_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "INDEX_DELAY_S", 0.0)

    class FailingOps(RecordingOps):
        fail = False

        def fdatasync(self, handle: Handle) -> None:
            if self.fail:
                raise OSError(5, "Input/output error")
            super().fdatasync(handle)

    ops = FailingOps()

    async def main() -> None:
        async with Engine.open(_config(tmp_path, fsync="always"), fileops=ops) as eng:
            root = await _root(eng)
            await eng.submit(_append(root))
            await _settled(eng)  # the writer loop waits with no timer that would wake it
            ops.fail = True
            with pytest.raises(FatalStorageError):
                await eng.submit(_append(root, "lost"))
            with anyio.fail_after(10):
                await eng._stopped.wait()  # the writer loop ended
            with pytest.raises(FatalStorageError):
                eng.enqueue(_append(root, "after"))

    anyio.run(main)


def test_an_unexpected_error_in_a_lone_append_ends_the_writer_loop_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with Engine.open(_config(tmp_path, fsync="always"), fileops=RecordingOps()) as eng:
            root = await _root(eng)
            await eng.submit(_append(root))
            await anyio.sleep(0.01)

            def broken(run: Any) -> float:
                raise RuntimeError("a bug in the write path")

            monkeypatch.setattr(eng, "_timed_write", broken)
            eng.enqueue(_append(root, "x"))
            await anyio.sleep(10)  # cancelled when the writer loop fails

    with pytest.raises(BaseException) as raised:  # an ExceptionGroup
        anyio.run(main)
    assert raised.group_contains(RuntimeError, match="a bug in the write path")  # type: ignore[attr-defined]
