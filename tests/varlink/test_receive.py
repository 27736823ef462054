"""Every read of the server goes through one buffer allocated once (framing.ReceiveBuffer):
a read allocates what came, not the read's size (a fresh 256 KiB object per read cost an mmap,
page faults and a munmap each: docs/performance.md, "The loop's reads"). The clients read at
most CLIENT_RECEIVE_SIZE at a time, below glibc's mmap threshold."""

from __future__ import annotations

import socket
import tracemalloc
from pathlib import Path

import anyio
import pytest

from tests.varlink.demo import CountReply, EchoReply, raw_connect, read_frames, serving
from tests.varlink.test_pipelining import Q, call, queue_server
from timelined.varlink.client import AsyncVarlinkClient, VarlinkClient
from timelined.varlink.framing import DEFAULT_RECEIVE_SIZE, ReceiveBuffer

ECHO = "io.timelined.Test.Echo"
COUNT = "io.timelined.Test.Count"
# A client's peak while it makes small calls: the replies, the calls, the server's side (it runs
# in this process too: ~80-120 KB measured) and one read's object of CLIENT_RECEIVE_SIZE; a read
# of the server's size (256 KiB: past glibc's mmap threshold) alone would pass it.
CLIENT_PEAK = DEFAULT_RECEIVE_SIZE


async def test_serving_small_calls_allocates_far_less_than_a_read_size(tmp_path: Path) -> None:
    async with queue_server(tmp_path) as (_, _, path):
        stream = await raw_connect(path)
        await stream.send(call(Q + "Put", {"value": "warm"}))
        await read_frames(stream, 1)
        tracemalloc.start()
        try:
            for i in range(20):
                # Writes (the read callback's path) and a read (the connection's task's path).
                await stream.send(call(Q + "Put", {"value": f"v{i}"}))
                await read_frames(stream, 1)
                await stream.send(call(Q + "Get"))
                await read_frames(stream, 1)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await stream.aclose()
    assert peak < DEFAULT_RECEIVE_SIZE // 2


def test_a_read_returns_what_came_and_the_buffer_is_reused() -> None:
    a, b = socket.socketpair()
    with a, b:
        into = ReceiveBuffer(8)
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            into.recv(b)
        a.sendall(b"hello")
        first = into.recv(b)
        a.sendall(b"0123456789")
        second, third = into.recv(b), into.recv(b)
        a.close()
        assert (first, second, third, into.recv(b)) == (b"hello", b"01234567", b"89", b"")


async def test_the_async_client_reads_small_replies_in_reads_below_the_mmap_threshold(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as r, AsyncVarlinkClient(r.path) as c:
        await c.call_typed(ECHO, {"text": "warm"}, EchoReply)
        tracemalloc.start()
        try:
            for i in range(20):
                # The shared pipelined connection's reads, and a stream's own connection's.
                assert await c.call_typed(ECHO, {"text": f"t{i}"}, EchoReply) == EchoReply(f"t{i}")
                got = [x async for x in c.stream_typed(COUNT, {"n": 2}, CountReply)]
                assert got == [CountReply(0), CountReply(1)]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < CLIENT_PEAK


async def test_the_blocking_client_reads_small_replies_in_reads_below_the_mmap_threshold(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as r:

        def calls() -> int:
            with VarlinkClient(r.path, timeout=5) as c:
                c.call(ECHO, {"text": "warm"})
                tracemalloc.start()
                try:
                    for i in range(20):
                        assert c.call(ECHO, {"text": f"t{i}"}) == {"text": f"t{i}"}
                        assert [x["i"] for x in c.call(COUNT, {"n": 2}, more=True)] == [0, 1]
                    return tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()

        peak = await anyio.to_thread.run_sync(calls)
    assert peak < CLIENT_PEAK
