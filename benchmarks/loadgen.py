"""The socket load generator, run as its own process: `python -m benchmarks.loadgen ARGS_JSON`.

It opens `conns` connections to the daemon, gives each its own conversation (or uses the
contexts it was given), prints `ready`, waits for a line on stdin, then runs `repeats` windows of
closed-loop AppendBlock calls (or, with `method` "AppendBlocks" and `blocks` N, calls of N blocks
each) and prints one JSON line per window: the rate of acknowledged
appends, the latency from sending a call to having its reply, and the load generator's own CPU
over the window (it shares the machine's cores with the daemon). With `depth` 1 (the default)
each connection is a chat client waiting for its durable acknowledgement before the next call;
with `depth` N each connection keeps N calls in flight (Varlink pipelining: replies come back in
the order of the calls), as a client library multiplexing concurrent callers on one connection.

It speaks the wire protocol with asyncio protocols and pre-encoded calls, so that it needs as
little CPU as possible on a 2-core machine where it shares the cores with the daemon.

With `client` true it makes the same calls through `timelined.client.AsyncClient` instead: `conns`
concurrent tasks (times `depth`) sharing the client, which pipelines them on one connection. Its
CPU per call beside the raw generator's is what the client library costs a program.
"""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import msgspec

from benchmarks.dataset import TextGen
from benchmarks.stats import summary_ms
from benchmarks.wire import TIMELINE, decode_reply, encode_call


class _Conn(asyncio.Protocol):
    """One connection; replies are matched to calls by order (Varlink answers in order)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiters: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio's

    def data_received(self, data: bytes) -> None:
        self.buf += data
        start = 0
        while (end := self.buf.find(0, start)) >= 0:
            frame = bytes(self.buf[start:end])
            start = end + 1
            if self.waiters:
                waiter = self.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(frame)
        if start:
            del self.buf[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("the daemon closed the connection"))

    async def call(self, data: bytes) -> bytes:
        assert self.transport is not None
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self.transport.write(data)
        return await waiter


class _Error(msgspec.Struct):
    error: str | None = None


_error = msgspec.json.Decoder(_Error)


async def main(args: dict[str, Any]) -> None:
    if args.get("client"):
        await client_main(args)
        return
    loop = asyncio.get_running_loop()
    conns: list[_Conn] = []
    for _ in range(args["conns"]):
        _, proto = await loop.create_unix_connection(_Conn, args["socket"])
        conns.append(proto)
    contexts: list[str] = list(args.get("contexts") or [])
    for i, c in enumerate(conns[len(contexts) :]):
        frame = await c.call(encode_call(f"{TIMELINE}.CreateConversation", {"name": f"load {i}"}))
        contexts.append(decode_reply(frame)["conversation"]["root_context_id"])
    gen = TextGen(seed=99)
    texts = [gen.text() for _ in range(256)]
    per_call = max(1, int(args.get("blocks", 1)))
    calls = [
        [
            encode_call(f"{TIMELINE}.{args.get('method', 'AppendBlock')}", params)
            for params in _call_params(
                args.get("method", "AppendBlock"),
                contexts[n % len(contexts)],
                texts[n % 7 :: 7],
                per_call,
            )
        ]
        for n in range(len(conns))
    ]

    async def one(n: int, i: int) -> str | None:
        frame = await conns[n].call(calls[n][i % len(calls[n])])
        if frame.startswith(b'{"error"') or _error.decode(frame).error is not None:
            return _error.decode(frame).error or "?"
        return None

    await windows(args, len(conns), one)


async def client_main(args: dict[str, Any]) -> None:
    """The same load through the client library: one AsyncClient, `conns` x `depth` tasks."""
    from timelined.client import AsyncClient
    from timelined.errors import TimelinedError

    async with AsyncClient(args["socket"]) as tl:
        contexts: list[str] = list(args.get("contexts") or [])
        for i in range(len(contexts), args["conns"]):
            conv = await tl.create_conversation(f"load {i}")
            contexts.append(conv.root_context_id)
        gen = TextGen(seed=99)
        texts = [gen.text() for _ in range(256)]

        async def one(n: int, i: int) -> str | None:
            try:
                await tl.append_block(contexts[n], "user", texts[(n + 7 * i) % len(texts)])
            except TimelinedError as exc:
                return type(exc).__name__
            return None

        await windows(args, args["conns"], one)


async def windows(
    args: dict[str, Any], conns: int, one: Callable[[int, int], Awaitable[str | None]]
) -> None:
    """Print `ready`, wait for the go line, then run and report the windows: `one(n, i)` makes
    the i-th call of connection n and returns the error's name, or None."""
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)

    clock = time.perf_counter
    state: dict[str, Any] = {}

    async def worker(n: int) -> None:
        i = 0
        while not state["stop"]:
            t = clock()
            err = await one(n, i)
            done = clock()
            i += 1
            if not state["measure"]:
                continue
            if err is not None:
                state["errors"][err] = state["errors"].get(err, 0) + 1
                continue
            state["lat"].append(done - t)

    for _ in range(args.get("repeats", 1)):
        state.update(stop=False, measure=False, lat=[], errors={})
        depth = max(1, int(args.get("depth", 1)))
        tasks = [asyncio.create_task(worker(n)) for n in range(conns) for _ in range(depth)]
        await asyncio.sleep(args.get("warmup", 0.3))
        state["measure"] = True
        start, cpu0 = clock(), time.process_time()
        await asyncio.sleep(args["window"])
        state["measure"] = False
        elapsed, cpu = clock() - start, time.process_time() - cpu0
        lat: list[float] = state["lat"]
        state["stop"] = True
        await asyncio.gather(*tasks)
        out = {
            "rate": len(lat) / elapsed,
            "ok": len(lat),
            "errors": state["errors"],
            "cpu": cpu / elapsed,  # this process's CPU over the window (1.0 = one core)
        }
        out.update(summary_ms(lat))
        print(json.dumps(out), flush=True)


def _call_params(
    method: str, context_id: str, texts: list[str], blocks: int
) -> list[dict[str, Any]]:
    """AppendBlock's parameters, one text each, or AppendBlocks' with `blocks` texts each."""
    if method != "AppendBlocks":
        return [{"context_id": context_id, "role": "user", "content": t} for t in texts]
    return [
        {
            "context_id": context_id,
            "blocks": [
                {"role": "user", "content": texts[(i + k) % len(texts)]} for k in range(blocks)
            ],
        }
        for i in range(len(texts))
    ]


class Load:
    """The parent's handle on one load-generator process."""

    def __init__(
        self,
        socket_path: str,
        conns: int,
        window: float,
        *,
        repeats: int = 1,
        warmup: float = 0.3,
        contexts: list[str] | None = None,
        depth: int = 1,
        method: str = "AppendBlock",
        blocks: int = 1,
        client: bool = False,
    ) -> None:
        args = {
            "method": method,
            "blocks": blocks,
            "socket": socket_path,
            "conns": conns,
            "window": window,
            "repeats": repeats,
            "warmup": warmup,
            "contexts": contexts or [],
            "depth": depth,
            "client": client,
        }
        self.repeats = repeats
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.loadgen", json.dumps(args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"the load generator failed to start: {line!r}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def results(self, timeout: float = 600) -> list[dict[str, Any]]:
        assert self.proc.stdout is not None
        out = [json.loads(self.proc.stdout.readline()) for _ in range(self.repeats)]
        if self.proc.wait(timeout) != 0:
            raise RuntimeError(f"the load generator exited with {self.proc.returncode}")
        return out

    def run(self) -> list[dict[str, Any]]:
        self.go()
        return self.results()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
