"""The error mappers: what goes on the wire with the daemon's mapper (the bytes timelined sent
before the library had mappers), with none, and what a client's mapper raises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from tests.varlink.demo import INFO, TEST, Probe, handlers, raw_connect, serving
from timelined.daemon.varlink_setup import map_error
from timelined.errors import (
    ContextNotFound,
    LimitExceeded,
    ProtocolError,
    ReportNotFound,
    ShuttingDown,
    StorageError,
)
from timelined.varlink.client import AsyncConnection, Connection
from timelined.varlink.errors import (
    ConnectionFailed,
    InternalFailure,
    LimitReached,
    ProtocolViolation,
    ServerStopping,
    VarlinkError,
    VarlinkErrorReply,
)
from timelined.varlink.protocol import encode_call, encode_error
from timelined.varlink.server import ServerLimits, VarlinkServer, listen_unix

T = "io.timelined.Test."


async def _read_all(stream: anyio.abc.SocketStream) -> bytes:
    data = b""
    with anyio.fail_after(5):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return data


async def _exchange(path: Path, payload: bytes) -> list[bytes]:
    """Send `payload` raw, half-close, and return every frame until the server closes."""
    s = await raw_connect(path)
    async with s:
        await s.send(payload)
        await s.send_eof()
        data = await _read_all(s)
    return [f + b"\0" for f in data.split(b"\0") if f]


def _reason(frame: bytes) -> Any:
    return msgspec.json.decode(frame[:-1])["parameters"]["reason"]


TIMELINE, ADMIN = "io.timelined.Timeline", "io.timelined.Admin"


@pytest.mark.parametrize(
    ("interface", "named_by"),
    [
        (TIMELINE, TIMELINE),
        (ADMIN, ADMIN),  # all four are declared by both interfaces
        (None, TIMELINE),  # outside a call: the home interface
        ("org.varlink.service", TIMELINE),  # declares none of them
        ("io.nope.Thing", TIMELINE),
    ],
)
def test_the_daemon_names_the_library_errors_by_the_called_interface(
    interface: str | None, named_by: str
) -> None:
    cases: list[tuple[VarlinkError, str, dict[str, Any]]] = [
        (ProtocolViolation("bad"), "ProtocolError", dict(ProtocolError("bad").params)),
        (
            LimitReached("max_connections", 4, 3),
            "LimitExceeded",
            dict(LimitExceeded("max_connections", 4, 3).params),
        ),
        (ServerStopping(), "ShuttingDown", dict(ShuttingDown().params)),
        (
            InternalFailure("a.B.C", "KeyError"),
            "InternalError",
            {
                "message": "internal error in a.B.C; the daemon's log has the details",
                "exception": "KeyError",
            },
        ),
    ]
    for error, name, params in cases:
        assert map_error(error, interface) == (f"{named_by}.{name}", params)
    assert map_error(RuntimeError("x"), interface) is None  # not the daemon's: internal


def test_an_error_one_interface_declares_keeps_its_home_name() -> None:
    """Sent on a call of the other interface (which does not declare it), or outside a call,
    an error is named by the interface that declares it, never by one that does not."""

    def name(exc: Exception, interface: str | None) -> str:
        named = map_error(exc, interface)
        assert named is not None
        return named[0]

    for interface in (TIMELINE, ADMIN, None):
        assert name(ContextNotFound("c"), interface) == "io.timelined.Timeline.ContextNotFound"
        assert name(ReportNotFound("r"), interface) == "io.timelined.Admin.ReportNotFound"
    eio = StorageError("state.db", 5, "EIO")  # declared by both
    assert name(eio, ADMIN) == "io.timelined.Admin.StorageError"
    assert name(eio, TIMELINE) == "io.timelined.Timeline.StorageError"
    assert name(eio, None) == "io.timelined.Timeline.StorageError"


async def test_protocol_errors_on_the_wire_are_the_daemons_bytes(tmp_path: Path) -> None:
    async with serving(tmp_path, limits=ServerLimits(max_message_bytes=1024)) as r:
        bad = await _exchange(r.path, b"[1]\0")
        assert bad == [
            encode_error(
                "io.timelined.Timeline.ProtocolError", ProtocolError(_reason(bad[0])).params
            )
        ]
        big = await _exchange(r.path, b'{"method":"' + b"x" * 4096)
        size = msgspec.json.decode(big[0][:-1])["parameters"]["size"]
        assert size > 1024
        want = LimitExceeded("max_message_bytes", size, 1024)
        assert big == [encode_error("io.timelined.Timeline.LimitExceeded", want.params)]
        boom = await _exchange(r.path, encode_call(T + "Boom", {}))
        assert boom == [  # io.timelined.Test does not declare it: its home interface names it
            b'{"error":"io.timelined.Timeline.InternalError","parameters":{"message":"internal '
            b'error in io.timelined.Test.Boom; the daemon\'s log has the details","exception":'
            b'"RuntimeError"}}\0'
        ]
        fail = await _exchange(r.path, encode_call(T + "Fail", {"id": "c1"}))
        assert fail == [
            b'{"error":"io.timelined.Test.ContextNotFound","parameters":{"id":"c1",'
            b'"message":"no context with id \'c1\'"}}\0'
        ]


async def test_without_a_mapper_the_library_sends_its_own_names(tmp_path: Path) -> None:
    server = VarlinkServer(INFO)  # no mapper: it knows no application error
    server.register(TEST, handlers(Probe()))
    path = tmp_path / "plain.sock"
    listener = await listen_unix(path, 0o600)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve, listener)
        try:
            # A TimelinedError is just an exception to a server that was not told about it.
            fail = await _exchange(path, encode_call(T + "Fail", {"id": "c1"}))
            assert fail == [
                b'{"error":"org.varlink.transport.InternalError","parameters":{"message":'
                b"\"internal error in io.timelined.Test.Fail; the server's log has the "
                b'details","exception":"ContextNotFound"}}\0'
            ]
            bad = await _exchange(path, b"[1]\0")
            assert bad == [encode_error(*_named(ProtocolViolation(_reason(bad[0]))))]
            assert (
                msgspec.json.decode(bad[0][:-1])["error"] == "org.varlink.transport.ProtocolError"
            )
            conn = await AsyncConnection.open(path)
            try:
                with pytest.raises(VarlinkErrorReply) as err:
                    await conn.call(T + "Boom", {})
                assert err.value.name == "org.varlink.transport.InternalError"
            finally:
                conn.close()
        finally:
            await server.shutdown(1)


def _named(error: VarlinkError) -> tuple[str, dict[str, Any]]:
    return error.name, error.parameters


class Mapped(Exception):
    def __init__(self, error: VarlinkError) -> None:
        super().__init__(error.name)
        self.error = error


async def test_a_client_raises_what_its_mapper_makes_of_every_error(tmp_path: Path) -> None:
    with pytest.raises(Mapped) as missing:
        Connection.open(tmp_path / "none.sock", map_error=Mapped)
    assert isinstance(missing.value.error, ConnectionFailed)
    assert missing.value.error.path == str(tmp_path / "none.sock")
    async with serving(tmp_path) as r:
        conn = await AsyncConnection.open(r.path, map_error=Mapped)
        try:
            with pytest.raises(Mapped) as reply:
                await conn.call(T + "Fail", {"id": "c9"})
            assert isinstance(reply.value.error, VarlinkErrorReply)
            assert reply.value.error.name == "io.timelined.Test.ContextNotFound"
            assert reply.value.error.parameters["id"] == "c9"
            assert not conn.broken  # an error reply ends the call, not the connection
        finally:
            conn.close()
        with pytest.raises(Mapped) as closed:
            await conn.call(T + "Echo", {"text": "x"})
        assert isinstance(closed.value.error, ConnectionFailed)
