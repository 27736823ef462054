"""A do-nothing Varlink server, run as its own process: `python -m benchmarks.echo SOCKET`.

It answers every NUL-terminated frame with one fixed AppendBlock-shaped reply, on the event loop
the daemon uses (uvloop where it imports) with asyncio protocols: no decoding, no rules, no disk.
The raw part drives it with the socket part's own load generator, so its rate is the ceiling of
round trips through a Unix socket that a Python server and this client reach on this machine,
whatever the server does; the daemon's socket figures are read against it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

REPLY = (
    b'{"parameters":{"block":{"id":"blk_01jd7k3m4n5p6q7r8s9t0v1w2x",'
    b'"context_id":"ctx_01jd7k3m4n5p6q7r8s9t0v1w2x","role":"user","content":"-",'
    b'"timestamp":"2026-01-01T00:00:00.000000Z","seq":1},"seq":1}}\0'
)


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's: cast, do not check
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        frames = data.count(0)  # one NUL ends each frame, however the reads split them
        if frames:
            self.transport.write(REPLY * frames)


async def serve(path: str) -> None:
    server = await asyncio.get_running_loop().create_unix_server(_Echo, path)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main(path: str) -> None:
    try:
        import uvloop
    except ImportError:  # the daemon falls back to plain asyncio too
        asyncio.run(serve(path))
    else:
        uvloop.run(serve(path))


if __name__ == "__main__":
    main(sys.argv[1])
