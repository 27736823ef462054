"""A tiny demo interface, `io.timelined.Test`, and a server harness for the protocol tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import msgspec

from timelined.daemon.varlink_setup import error_mapper
from timelined.errors import ContextNotFound, SlowConsumer
from timelined.varlink.interface import ErrorDef, Interface, Method
from timelined.varlink.server import (
    Authorizer,
    CallContext,
    Final,
    ServerLimits,
    VarlinkServer,
    listen_unix,
)
from timelined.varlink.service import ServiceInfo


class EchoParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    text: str
    times: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1


class EchoReply(msgspec.Struct, frozen=True):
    text: str


class FailParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str


class Empty(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class CountParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    n: int
    delay_s: float = 0.0
    fail_at: int | None = None
    forget_final: bool = False
    big_at: int | None = None  # this reply carries BIG_PAD bytes (past the tests' frame limit)


BIG_PAD = 100_000


class CountReply(msgspec.Struct, frozen=True, omit_defaults=True):
    i: int
    pad: str = ""


class SlowParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seconds: float


class SlowReply(msgspec.Struct, frozen=True):
    slept: float


class Peer(msgspec.Struct, frozen=True):
    uid: int
    gid: int
    pid: int


class Item(msgspec.Struct, frozen=True):
    """One item of a bag."""

    name: str
    kind: Literal["plain", "fancy"]
    tags: list[str] = []
    extra: dict[str, Any] | None = None


class BagParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    items: list[Item]
    counts: dict[str, int] = {}


class BagReply(msgspec.Struct, frozen=True):
    total: int
    names: list[str]


class NotFoundParams(msgspec.Struct, frozen=True):
    id: str
    message: str


TEST = Interface(
    name="io.timelined.Test",
    doc="A demo interface for the protocol layer's tests.",
    methods=[
        Method("Echo", EchoParams, EchoReply, doc="Returns the text, `times` times over."),
        Method("Fail", FailParams, Empty, doc="Always fails with ContextNotFound."),
        Method("Boom", Empty, Empty, doc="Raises an unexpected exception."),
        Method("Count", CountParams, CountReply, doc="Streams 0 .. n-1."),
        Method("Slow", SlowParams, SlowReply),
        Method("WhoAmI", Empty, Peer),
        Method("Bag", BagParams, BagReply),
        Method("Unimplemented", Empty, Empty),
    ],
    errors=[ErrorDef("ContextNotFound", NotFoundParams, "No context with that id.")],
)

INFO = ServiceInfo(vendor="timelined", product="test", version="0", url="https://example.invalid")


@dataclass
class Probe:
    """What the handlers saw, for assertions."""

    oneway_calls: list[str] = field(default_factory=list)
    streams_closed: int = 0
    slow_done: int = 0


def handlers(probe: Probe) -> dict[str, Any]:
    async def echo(p: EchoParams, ctx: CallContext) -> EchoReply:
        if ctx.oneway:
            probe.oneway_calls.append(p.text)
        return EchoReply(p.text * p.times)

    async def fail(p: FailParams, ctx: CallContext) -> Empty:
        raise ContextNotFound(p.id)

    async def boom(p: Empty, ctx: CallContext) -> Empty:
        raise RuntimeError("kaboom")

    async def count(
        p: CountParams, ctx: CallContext
    ) -> AsyncIterator[CountReply | Final[CountReply]]:
        try:
            for i in range(p.n):
                if p.fail_at == i:
                    raise SlowConsumer(i)
                if p.delay_s:
                    await anyio.sleep(p.delay_s)
                reply = CountReply(i, "p" * BIG_PAD if p.big_at == i else "")
                yield Final(reply) if i == p.n - 1 and not p.forget_final else reply
        finally:
            probe.streams_closed += 1

    async def slow(p: SlowParams, ctx: CallContext) -> SlowReply:
        await anyio.sleep(p.seconds)
        probe.slow_done += 1
        return SlowReply(p.seconds)

    async def who(p: Empty, ctx: CallContext) -> Peer:
        return Peer(ctx.peer.uid, ctx.peer.gid, ctx.peer.pid)

    async def bag(p: BagParams, ctx: CallContext) -> BagReply:
        return BagReply(sum(p.counts.values()), [i.name for i in p.items])

    return {
        "Echo": echo,
        "Fail": fail,
        "Boom": boom,
        "Count": count,
        "Slow": slow,
        "WhoAmI": who,
        "Bag": bag,
    }


@dataclass
class Running:
    server: VarlinkServer
    path: Path
    probe: Probe


@asynccontextmanager
async def serving(
    tmp_path: Path,
    *,
    limits: ServerLimits | None = None,
    authorize: Authorizer | None = None,
    grace_s: float = 2.0,
) -> AsyncIterator[Running]:
    """A server on a fresh socket in `tmp_path`, in the current event loop."""
    path = tmp_path / "run" / "test.sock"
    probe = Probe()
    server = VarlinkServer(
        INFO,
        limits=limits or ServerLimits(max_message_bytes=64 * 1024),
        authorize=authorize,
        # The daemon's mapper for this interface: the tests read the names timelined sends
        # (ContextNotFound, which TEST declares, as io.timelined.Test.ContextNotFound).
        map_error=error_mapper([TEST]),
    )
    server.register(TEST, handlers(probe))
    listener = await listen_unix(path, 0o600)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve, listener)
        try:
            yield Running(server, path, probe)
        finally:
            await server.shutdown(grace_s)


async def raw_connect(path: Path) -> anyio.abc.SocketStream:
    return await anyio.connect_unix(os.fspath(path))


async def read_frames(stream: anyio.abc.SocketStream, n: int, limit_s: float = 5) -> list[Any]:
    """Read exactly `n` reply frames, decoded."""
    buf = b""
    frames: list[bytes] = []
    with anyio.fail_after(limit_s):
        while len(frames) < n:
            chunk = await stream.receive()
            buf += chunk
            *done, buf = buf.split(b"\0")
            frames.extend(done)
    return [msgspec.json.decode(f) for f in frames]


async def read_until_closed(stream: anyio.abc.SocketStream, limit_s: float = 5) -> list[Any]:
    """Every frame until the server closes the connection."""
    buf = b""
    with anyio.fail_after(limit_s):
        while True:
            try:
                buf += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
    return [msgspec.json.decode(f) for f in buf.split(b"\0") if f]


async def wait_until(predicate: Callable[[], bool], limit_s: float = 10) -> None:
    """Poll a condition that nothing signals (a counter of the server, a handler's probe).
    The default deadline is generous (it was 2 s): it only bounds how long a condition that
    never holds takes to fail, and a loaded machine can hold the loop back for seconds."""
    with anyio.fail_after(limit_s):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.01)
