"""Every read of the server goes through one buffer allocated once (framing.ReceiveBuffer):
a read allocates what came, not the read's size (a fresh 256 KiB object per read cost an mmap,
page faults and a munmap each: docs/performance.md, "The loop's reads")."""

from __future__ import annotations

import socket
import tracemalloc
from pathlib import Path

import pytest

from tests.varlink.demo import raw_connect, read_frames
from tests.varlink.test_pipelining import Q, call, queue_server
from timelined.varlink.framing import DEFAULT_RECEIVE_SIZE, ReceiveBuffer


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
