"""Pipelined calls on one connection against the real handlers and engine (in-process): the
writes of one read share a batch, a read pipelined after them sees them, replies keep the order
of the calls, and a refused write between them is answered in its place."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.daemon.harness import inprocess_daemon, short_tempdir
from tests.varlink.demo import raw_connect, read_frames
from timelined.client import AsyncClient

T = "io.timelined.Timeline."


def call(method: str, parameters: dict[str, Any]) -> bytes:
    return msgspec.json.encode({"method": T + method, "parameters": parameters}) + b"\0"


@pytest.fixture
def base() -> Iterator[Path]:
    with short_tempdir() as path:
        yield path


async def test_pipelined_appends_share_a_batch_and_a_read_after_them_sees_them(
    base: Path,
) -> None:
    async with inprocess_daemon(base) as run, AsyncClient(run.socket_path) as c:
        ctx = (await c.create_conversation("pipe")).root_context_id
        batches = run.app.engine.stats.batches
        stream = await raw_connect(run.socket_path)
        frames = [call("AppendBlock", {"context_id": ctx, "role": "user", "content": "a"})]
        frames.append(
            call("AppendBlock", {"context_id": "ctx_nope", "role": "user", "content": "x"})
        )
        frames.append(call("AppendBlock", {"context_id": ctx, "role": "user", "content": "b"}))
        frames.append(call("GetHistory", {"context_id": ctx}))
        frames.append(call("AppendBlock", {"context_id": ctx, "role": "user", "content": "c"}))
        await stream.send(b"".join(frames))
        replies = await read_frames(stream, 5)
        await stream.aclose()
    assert replies[0]["parameters"]["block"]["content"] == "a"
    assert replies[1]["error"] == "io.timelined.Timeline.ContextNotFound"
    assert replies[2]["parameters"]["block"]["content"] == "b"
    history = [item["block"]["content"] for item in replies[3]["parameters"]["blocks"]]
    assert history == ["a", "b"]  # read-your-writes: the read waited for the writes before it
    assert replies[4]["parameters"]["block"]["content"] == "c"
    # a, x, b in one batch (they were queued together); c after the read, in a second one
    assert run.app.engine.stats.batches - batches == 2
