"""Pipelining on both sides: deferred handlers answered in order, one batch per read; the async
client's shared connection for concurrent tasks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec

from tests.varlink.demo import INFO, raw_connect, read_frames, serving, wait_until
from timelined.daemon.varlink_setup import map_error
from timelined.errors import ContextNotFound
from timelined.varlink.client import AsyncVarlinkClient
from timelined.varlink.deferred import deferring, reply_like_call
from timelined.varlink.errors import VarlinkErrorReply
from timelined.varlink.interface import Interface, Method
from timelined.varlink.server import CallContext, ServerLimits, VarlinkServer, listen_unix

ECHO_METHOD = "io.timelined.Test.Echo"
SVC = "org.varlink.service."
Q = "io.timelined.Queue."


class PutParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    value: str


class PutReply(msgspec.Struct, frozen=True):
    position: int


class GetParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class GetReply(msgspec.Struct, frozen=True):
    values: list[str]


QUEUE = Interface(
    name="io.timelined.Queue",
    doc="A store written by a batch writer, for the pipelining tests.",
    methods=[Method("Put", PutParams, PutReply), Method("Get", GetParams, GetReply)],
    errors=[],
)


class _Put:
    """A queued value: a Deferred the writer answers with its batch."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.position: int | None = None
        self.error: Exception | None = None
        self.callback: Callable[[], None] | None = None

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        self.callback = callback

    def outcome(self) -> PutReply:
        if self.error is not None:
            raise self.error
        assert self.position is not None
        return PutReply(self.position)


class Writer:
    """Answers every queued Put in one batch a moment after the first of it arrived."""

    def __init__(self) -> None:
        self.queue: list[_Put] = []
        self.store: list[str] = []
        self.batches: list[int] = []
        self.wake = anyio.Event()

    def put(self, value: str) -> _Put:
        item = _Put(value)
        self.queue.append(item)
        self.wake.set()
        return item

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = anyio.Event()
            await anyio.sleep(0.02)  # the writer's thread at work
            batch, self.queue = self.queue, []
            self.batches.append(len(batch))
            for item in batch:
                if item.value == "refuse":
                    item.error = ContextNotFound(item.value)
                else:
                    self.store.append(item.value)
                    item.position = len(self.store)
                assert item.callback is not None
                item.callback()


@asynccontextmanager
async def queue_server(
    tmp_path: Path, *, like_call: bool = True
) -> AsyncIterator[tuple[VarlinkServer, Writer, Path]]:
    """`like_call`: Put is marked `reply_like_call` (its reply, a position, is small)."""
    writer = Writer()

    @deferring
    def put(p: PutParams, ctx: CallContext) -> _Put:
        return writer.put(p.value)

    if like_call:
        put = reply_like_call(put)

    async def get(p: GetParams, ctx: CallContext) -> GetReply:
        return GetReply(list(writer.store))

    path = tmp_path / "q.sock"
    server = VarlinkServer(
        INFO, limits=ServerLimits(max_message_bytes=64 * 1024), map_error=map_error
    )
    server.register(QUEUE, {"Put": put, "Get": get})
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        await tg.start(server.serve, await listen_unix(path, 0o600))
        try:
            yield server, writer, path
        finally:
            await server.shutdown(2.0)
            tg.cancel_scope.cancel()


def call(method: str, parameters: Any = None, **flags: Any) -> bytes:
    msg: dict[str, Any] = {"method": method, "parameters": parameters or {}, **flags}
    return msgspec.json.encode(msg) + b"\0"


# --- the server ----------------------------------------------------------------------------------


async def test_the_calls_of_one_read_share_one_batch(tmp_path: Path) -> None:
    async with queue_server(tmp_path) as (_, writer, path):
        stream = await raw_connect(path)
        await stream.send(b"".join(call(Q + "Put", {"value": f"v{i}"}) for i in range(5)))
        replies = await read_frames(stream, 5)
        await stream.aclose()
    assert [r["parameters"]["position"] for r in replies] == [1, 2, 3, 4, 5]
    assert writer.batches == [5]  # queued together, not one batch per call


async def test_a_connection_has_at_most_a_window_of_writes_in_flight(tmp_path: Path) -> None:
    """100 writes in one read: 32 are in flight, the rest wait until their replies are
    written (a peer that pipelines writes with large replies and reads none held them all)."""
    async with queue_server(tmp_path) as (server, writer, path):
        stream = await raw_connect(path)
        await stream.send(b"".join(call(Q + "Put", {"value": f"v{i}"}) for i in range(100)))
        replies = await read_frames(stream, 100)
        await stream.aclose()
        assert server.buffers.used == 0
    assert [r["parameters"]["position"] for r in replies] == list(range(1, 101))
    assert writer.batches == [32, 32, 32, 4]


async def test_deferred_calls_of_unknown_reply_size_reserve_a_whole_frame(tmp_path: Path) -> None:
    """A deferred call's reply may be as large as a frame, and the replies of a batch all exist
    at once: without `reply_like_call` each reserves `max_message_bytes` (64 KiB here), so a
    connection has 16 in flight (1 MiB); at the daemon's 16 MiB, one. The window used to be
    guessed from the last batch's replies: after small ones 32 calls started whose replies
    could each be a frame."""
    async with queue_server(tmp_path, like_call=False) as (server, writer, path):
        stream = await raw_connect(path)
        await stream.send(b"".join(call(Q + "Put", {"value": f"v{i}"}) for i in range(40)))
        replies = await read_frames(stream, 40)
        await stream.aclose()
        assert server.buffers.used == 0
    assert [r["parameters"]["position"] for r in replies] == list(range(1, 41))
    assert writer.batches == [16, 16, 8]


async def test_a_read_after_writes_sees_them_and_replies_keep_the_call_order(
    tmp_path: Path,
) -> None:
    async with queue_server(tmp_path) as (_, writer, path):
        stream = await raw_connect(path)
        frames = [
            call(Q + "Put", {"value": "a"}),
            call(Q + "Put", {"value": "b"}),
            call(Q + "Get"),
            call(Q + "Put", {"value": "c"}),
        ]
        await stream.send(b"".join(frames))
        replies = await read_frames(stream, 4)
        await stream.aclose()
    assert [r["parameters"] for r in replies] == [
        {"position": 1},
        {"position": 2},
        {"values": ["a", "b"]},
        {"position": 3},
    ]
    assert writer.batches == [2, 1]


async def test_errors_between_deferred_calls_keep_their_place(tmp_path: Path) -> None:
    async with queue_server(tmp_path) as (_, writer, path):
        stream = await raw_connect(path)
        frames = [
            call(Q + "Put", {"value": "x"}),
            call(Q + "Nope"),  # answered at once, but after x's reply
            call(Q + "Put", {"value": "refuse"}),  # the writer refuses it
            call(Q + "Put", {"value": 5}),  # invalid: answered at once
            call(Q + "Put", {"value": "y"}, oneway=True),  # no reply
            call(Q + "Put", {"value": "z"}),
        ]
        await stream.send(b"".join(frames))
        replies = await read_frames(stream, 5)
        await stream.aclose()
    assert replies[0] == {"parameters": {"position": 1}}
    assert replies[1]["error"] == SVC + "MethodNotFound"
    assert replies[2]["error"] == "io.timelined.Timeline.ContextNotFound"
    assert replies[3]["error"] == SVC + "InvalidParameter"
    assert replies[4] == {"parameters": {"position": 3}}
    assert writer.store == ["x", "y", "z"]
    assert writer.batches == [4]


async def test_shutdown_answers_the_deferred_calls_in_flight(tmp_path: Path) -> None:
    async with queue_server(tmp_path) as (server, _, path):
        stream = await raw_connect(path)
        await stream.send(b"".join(call(Q + "Put", {"value": f"v{i}"}) for i in range(3)))
        await anyio.sleep(0.005)  # read and queued; the writer is at work
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.shutdown, 2.0)
            replies = await read_frames(stream, 3)
        await stream.aclose()
    assert [r["parameters"]["position"] for r in replies] == [1, 2, 3]


# --- the client ----------------------------------------------------------------------------------


async def test_concurrent_tasks_share_one_pipelined_connection(tmp_path: Path) -> None:
    async with serving(tmp_path) as r, AsyncVarlinkClient(r.path) as c:
        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            results[i] = await c.call(ECHO_METHOD, {"text": str(i)})

        async with anyio.create_task_group() as tg:
            for i in range(64):
                tg.start_soon(one, i)
        assert results == {i: {"text": str(i)} for i in range(64)}
        assert r.server.stats().connections_total == 1


async def test_each_caller_gets_its_own_error_and_the_connection_goes_on(tmp_path: Path) -> None:
    async with serving(tmp_path) as r, AsyncVarlinkClient(r.path) as c:
        outcomes: dict[int, Any] = {}

        async def one(i: int) -> None:
            try:
                if i % 3 == 0:
                    await c.call("io.timelined.Test.Fail", {"id": f"ctx_{i}"})
                outcomes[i] = await c.call(ECHO_METHOD, {"text": str(i)})
            except VarlinkErrorReply as exc:
                outcomes[i] = exc.parameters["id"]

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(one, i)
        assert outcomes == {i: f"ctx_{i}" if i % 3 == 0 else {"text": str(i)} for i in range(30)}
        assert r.server.stats().connections_total == 1


async def test_a_cancelled_caller_leaves_the_connection_usable(tmp_path: Path) -> None:
    async with serving(tmp_path) as r, AsyncVarlinkClient(r.path) as c:
        with anyio.move_on_after(0.05):
            await c.call("io.timelined.Test.Slow", {"seconds": 0.3})
        # Its reply comes later and is dropped: the next caller gets its own.
        assert await c.call(ECHO_METHOD, {"text": "next"}) == {"text": "next"}
        assert r.server.stats().connections_total == 1


async def test_closing_after_a_cancelled_call_closes_the_connection(tmp_path: Path) -> None:
    """The only call in flight was cancelled: aclose() closes the shared connection now (the
    server does not keep it, and its slot, until the idle timeout)."""
    async with serving(tmp_path) as r:
        c = AsyncVarlinkClient(r.path)
        with anyio.move_on_after(0.05):
            await c.call("io.timelined.Test.Slow", {"seconds": 0.3})
        await c.aclose()
        # The server's reply meets the closed socket and the server ends the connection.
        await wait_until(lambda: r.server.stats().connections_open == 0, 3)


async def test_a_closed_connection_with_a_cancelled_call_on_it_is_replaced(
    tmp_path: Path,
) -> None:
    """The server answered a cancelled call, then closed the idle connection: the next call
    goes to a new connection rather than failing on the closed one."""
    limits = ServerLimits(max_message_bytes=64 * 1024, idle_timeout_s=0.1)
    async with serving(tmp_path, limits=limits) as r, AsyncVarlinkClient(r.path) as c:
        with anyio.move_on_after(0.02):
            await c.call("io.timelined.Test.Slow", {"seconds": 0.05})
        await wait_until(lambda: r.server.stats().connections_open == 0, 3)
        assert await c.call(ECHO_METHOD, {"text": "b"}) == {"text": "b"}
        assert r.server.stats().connections_total == 2


async def test_a_stream_takes_a_connection_of_its_own(tmp_path: Path) -> None:
    async with serving(tmp_path) as r, AsyncVarlinkClient(r.path) as c:
        stream = c.stream("io.timelined.Test.Count", {"n": 3, "delay_s": 0.02})
        seen = [reply["i"] async for reply in stream]
        assert seen == [0, 1, 2]
        assert await c.call(ECHO_METHOD, {"text": "x"}) == {"text": "x"}


async def test_a_shared_connection_the_server_closed_is_replaced(tmp_path: Path) -> None:
    limits = ServerLimits(max_message_bytes=64 * 1024, idle_timeout_s=0.1)
    async with serving(tmp_path, limits=limits) as r, AsyncVarlinkClient(r.path) as c:
        assert await c.call(ECHO_METHOD, {"text": "a"}) == {"text": "a"}
        await anyio.sleep(0.5)  # the server closes the idle connection
        assert await c.call(ECHO_METHOD, {"text": "b"}) == {"text": "b"}
        assert r.server.stats().connections_total == 2
