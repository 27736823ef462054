"""SerialThread: the writer's own thread (order, one thread, errors, cancellation, close)."""

from __future__ import annotations

import threading
import time

import anyio
import anyio.lowlevel
import pytest

from timelined.writer.serial_thread import SerialThread


async def test_calls_run_in_submission_order_on_one_named_thread() -> None:
    thread = SerialThread("tl-test")
    seen: list[tuple[int, str]] = []

    def record(i: int) -> int:
        time.sleep(0.001 * (i % 3))  # uneven work must not reorder anything
        seen.append((i, threading.current_thread().name))
        return i * 2

    results: dict[int, int] = {}

    async def call(i: int) -> None:
        results[i] = await thread.run(record, i)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(call, i)
                await anyio.lowlevel.checkpoint()  # submit in this order
        assert [i for i, _ in seen] == list(range(40))
        assert {name for _, name in seen} == {"tl-test"}
        assert results == {i: i * 2 for i in range(40)}
    finally:
        thread.close()


async def test_exceptions_reach_the_caller_and_the_thread_survives() -> None:
    thread = SerialThread("tl-test")

    def fail(exc: BaseException) -> None:
        raise exc

    try:
        with pytest.raises(ValueError, match="named"):
            await thread.run(fail, ValueError("named"))
        with pytest.raises(SystemExit):
            await thread.run(fail, SystemExit(3))
        assert await thread.run(lambda: "alive") == "alive"
    finally:
        thread.close()


async def test_a_cancelled_caller_waits_for_its_call_to_end() -> None:
    thread = SerialThread("tl-test")
    started, finished = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        time.sleep(0.2)
        finished.set()

    try:
        with anyio.move_on_after(0.01) as scope:
            await thread.run(slow)
        # The timeout fired while the call ran, but the caller came back only once it ended.
        assert scope.cancel_called
        assert started.is_set() and finished.is_set()
    finally:
        thread.close()


async def test_close_finishes_queued_calls_then_refuses_new_ones() -> None:
    thread = SerialThread("tl-test")
    done: list[int] = []
    # The first call holds the thread until the test has looked: a fixed 0.2 s sleep could
    # end before the loop got back to the assertion on a loaded machine.
    release = threading.Event()

    def slow_then(i: int) -> None:
        if i == 0:
            release.wait(10)  # the others queue up behind this one
        done.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(thread.run, slow_then, i)
        await anyio.sleep(0.05)  # all five submitted; the first still running
        assert done == []
        release.set()
        thread.close()  # waits for the queued calls, then joins
        assert done == list(range(5))
        assert not thread._thread.is_alive()
    thread.close()  # idempotent
    with pytest.raises(RuntimeError, match="tl-test is closed"):
        await thread.run(done.append, 99)


async def test_submit_queues_in_order_with_run_and_returns_the_future() -> None:
    """`submit` (the writer loop's unshielded hand-off) shares `run`'s queue and order, and its
    future carries the result or the error."""
    thread = SerialThread("tl-test")
    seen: list[str] = []

    def note(what: str) -> str:
        seen.append(what)
        return what

    def fail() -> None:
        raise ValueError("from submit")

    try:
        first = thread.submit(note, "submitted")
        second = thread.run(note, "run")
        assert await first == "submitted"
        assert await second == "run"
        assert seen == ["submitted", "run"]
        with pytest.raises(ValueError, match="from submit"):
            await thread.submit(fail)
    finally:
        thread.close()
    with pytest.raises(RuntimeError, match="closed"):
        thread.submit(note, "late")
