"""On asyncio a connection is served from a read callback between calls, with no task: what
needs one (an awaited handler, a reply the socket does not take whole) gets one and gives it
back, and nothing of the order, the batching or the bounds changes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.varlink.demo import raw_connect, read_frames
from tests.varlink.test_pipelining import SVC, Q, call, queue_server
from timelined.varlink import server as server_module
from timelined.varlink.server import VarlinkServer


async def _tasks_settle(limit: int) -> int:
    """The number of tasks once attached connections' tasks have had time to end."""
    with anyio.move_on_after(2):
        while len(asyncio.all_tasks()) > limit:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    return len(asyncio.all_tasks())


def _count_attaches(server: VarlinkServer) -> list[int]:
    """How often a connection is handed to a task from now on (a list of one, updated)."""
    attached = [0]
    attach = server._attach

    def counting(conn: Any) -> None:
        attached[0] += 1
        attach(conn)

    server._attach = counting  # type: ignore[method-assign]
    return attached


async def test_connections_between_calls_hold_no_task(tmp_path: Path) -> None:
    async with queue_server(tmp_path) as (server, _, path):
        before = len(asyncio.all_tasks())
        streams = [await raw_connect(path) for _ in range(20)]
        for i, stream in enumerate(streams):
            await stream.send(call(Q + "Put", {"value": f"v{i}"}))
        for stream in streams:
            assert (await read_frames(stream, 1))[0]["parameters"]["position"] > 0
        # A read call hands its connection to a task, which gives it back once answered.
        for stream in streams:
            await stream.send(call(Q + "Get"))
            assert len((await read_frames(stream, 1))[0]["parameters"]["values"]) == 20
        assert server.stats().connections_open == 20
        assert await _tasks_settle(before) <= before  # 20 idle connections, no task each
        for stream in streams:
            await stream.aclose()


async def test_calls_sent_while_a_batch_is_in_flight_are_answered_after_it(
    tmp_path: Path,
) -> None:
    async with queue_server(tmp_path) as (_, writer, path):
        stream = await raw_connect(path)
        await stream.send(call(Q + "Put", {"value": "a"}))
        await anyio.sleep(0.005)  # read and queued; the writer is at work for 20 ms
        await stream.send(call(Q + "Put", {"value": "b"}) + call(Q + "Get"))
        await stream.send(call(Q + "Put", {"value": "c"}))
        replies = await read_frames(stream, 4)
        await stream.aclose()
    answers = [r["parameters"].get("position", r["parameters"].get("values")) for r in replies]
    assert answers == [1, 2, ["a", "b"], 3]
    assert writer.batches[0] == 1  # b came while a's batch was in flight: not in it


async def test_a_peer_that_reads_nothing_gets_every_reply_in_order_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More replies than the socket's buffers hold: the callback's write is partial, a task
    writes the rest, and reading stops meanwhile (the calls wait in the kernel, not here)."""
    # One batch of them all, as before the window of calls in flight (test_pipelining shows
    # the window): else 20 ms per 32 calls, and the replies never fill the socket in time.
    monkeypatch.setattr(server_module, "_MAX_IN_FLIGHT", 100_000)
    n = 30_000
    async with queue_server(tmp_path) as (server, writer, path):
        attached = _count_attaches(server)
        stream = await raw_connect(path)
        calls = b"".join(call(Q + "Put", {"value": "v"}) for _ in range(n))

        async def send() -> None:
            await stream.send(calls)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await anyio.sleep(0.5)  # the replies fill the socket; nothing is read yet
            replies = await read_frames(stream, n, limit_s=30)
        assert attached[0] >= 1  # a write the socket did not take whole went to a task
        await stream.aclose()
        assert server.buffers.used == 0
    assert [r["parameters"]["position"] for r in replies] == list(range(1, n + 1))
    assert sum(writer.batches) == n


async def test_a_read_answered_at_once_past_the_flush_size_is_written_in_steps(
    tmp_path: Path,
) -> None:
    """Errors answered without a wait still leave in bounded writes: past _FLUSH_BYTES of
    replies the rest of the read goes to a task, which flushes as it goes."""
    n = 1_000  # replies ~110 kB: past _FLUSH_BYTES, within what the socket takes at once
    async with queue_server(tmp_path) as (server, _, path):
        attached = _count_attaches(server)
        stream = await raw_connect(path)
        await stream.send(b"".join(call(Q + f"Nope{i}") for i in range(n)))
        replies = await read_frames(stream, n, limit_s=30)
        await stream.aclose()
        assert attached[0] >= 1
    assert [r["parameters"]["method"] for r in replies] == [Q + f"Nope{i}" for i in range(n)]
    assert {r["error"] for r in replies} == {SVC + "MethodNotFound"}
