"""Everything a client call raises is a TimelinedError: the Varlink library's own exceptions
are translated at the client's boundary (`timelined.client_common.local_error`), never leaked.

The daemon's errors arrive as replies and are decoded to their classes (test_error_names.py);
here, the failures of the library itself: on a real daemon stopped or killed mid-call, on a
peer whose reply breaks the protocol, and for every exception class the library defines.
"""

from __future__ import annotations

import inspect
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

from tests.client.portal import PortalClient
from tests.daemon.harness import DaemonProcess, short_tempdir
from timelined.client import AsyncClient, Client, DaemonUnavailable, RemoteError, local_error
from timelined.errors import (
    InternalError,
    LimitExceeded,
    ProtocolError,
    ShuttingDown,
    TimelinedError,
)
from timelined.varlink import errors as varlink_errors
from timelined.varlink.errors import VarlinkError, VarlinkErrorReply

ClientFactory = Callable[[Path], Any]


@pytest.fixture(params=["Client", "AsyncClient"])
def open_client(request: pytest.FixtureRequest) -> Iterator[ClientFactory]:
    """Opens the blocking Client, or the AsyncClient behind a blocking portal, on a socket."""
    opened: list[Any] = []
    if request.param == "Client":

        def blocking(path: Path) -> Any:
            opened.append(Client(path, timeout=30))
            return opened[-1]

        yield blocking
        for client in opened:
            client.close()
        return
    with start_blocking_portal("asyncio") as portal:

        def on_portal(path: Path) -> Any:
            opened.append(PortalClient(portal, AsyncClient(path)))
            return opened[-1]

        yield on_portal
        for client in opened:
            client.close()


# --- every exception of the library -----------------------------------------------------------


def _sample(cls: type[VarlinkError]) -> VarlinkError:
    """An instance of `cls` from sample arguments (strings, and 7 for the numbers)."""
    args: dict[str, Any] = {}
    for name, param in inspect.signature(cls).parameters.items():
        if param.default is not inspect.Parameter.empty:
            continue
        args[name] = 7 if param.annotation in ("int", int) else f"io.example.{name.title()}"
    return cls(**args)


LIBRARY_ERRORS = [
    cls
    for _, cls in inspect.getmembers(varlink_errors, inspect.isclass)
    if issubclass(cls, VarlinkError) and cls is not VarlinkErrorReply
]


def test_the_library_s_exceptions_are_all_walked() -> None:
    names = {cls.__name__ for cls in LIBRARY_ERRORS}
    assert {"ConnectionFailed", "ProtocolViolation", "LimitReached", "ServerStopping"} <= names
    assert {"InternalFailure", "VarlinkError"} <= names


@pytest.mark.parametrize("cls", LIBRARY_ERRORS, ids=lambda c: c.__name__)
def test_each_failure_of_the_library_becomes_a_timelined_error(cls: type[VarlinkError]) -> None:
    assert isinstance(local_error(_sample(cls)), TimelinedError)


def test_the_library_s_failures_become_their_timelined_names() -> None:
    limit = local_error(varlink_errors.LimitReached("max_message_bytes", 9, 8))
    assert isinstance(limit, LimitExceeded) and limit.params["maximum"] == 8
    assert isinstance(local_error(varlink_errors.ServerStopping()), ShuttingDown)
    internal = local_error(varlink_errors.InternalFailure("io.x.Y.Z", "KeyError"))
    assert isinstance(internal, InternalError) and "KeyError in io.x.Y.Z" in internal.message
    other = local_error(VarlinkError("io.example.Odd", {"message": "odd"}))
    assert isinstance(other, RemoteError) and other.error == "io.example.Odd"
    # An error reply is left to the client, which decodes it by its name (error_from_reply).
    reply = VarlinkErrorReply("io.timelined.Timeline.ContextNotFound", {"id": "x"})
    assert local_error(reply) is reply


# --- a real daemon that goes away mid-call ------------------------------------------------------


def _watch_until_it_fails(tl: Any, stop: Callable[[], object]) -> TimelinedError:
    """Watch (a call that lasts), have the daemon go away under it, and return what it raised."""
    events = tl.watch()
    timer = threading.Timer(0.3, stop)
    timer.start()
    try:
        with pytest.raises(TimelinedError) as failed:
            for _ in events:
                pass
    finally:
        timer.join()
        events.close()
    return failed.value


def test_a_daemon_stopped_mid_call(open_client: ClientFactory) -> None:
    with short_tempdir() as base:
        daemon = DaemonProcess(base, log={"fsync": "off"}).start()
        try:
            failure = _watch_until_it_fails(open_client(daemon.socket_path), daemon.stop)
        finally:
            daemon.kill()
    # The server says so to the stream before it closes (the frame is read before the EOF).
    assert isinstance(failure, ShuttingDown), repr(failure)


def test_a_daemon_killed_mid_call(open_client: ClientFactory) -> None:
    with short_tempdir() as base:
        daemon = DaemonProcess(base, log={"fsync": "off"}).start()
        try:
            failure = _watch_until_it_fails(open_client(daemon.socket_path), daemon.kill)
            after = open_client(daemon.socket_path)
            with pytest.raises(DaemonUnavailable):
                after.get_status()
        finally:
            daemon.kill()
    assert isinstance(failure, DaemonUnavailable), repr(failure)


# --- a peer whose reply breaks the protocol ---------------------------------------------------


def _one_reply_server(path: Path, reply: bytes) -> threading.Thread:
    """A Unix socket peer that reads one call and answers `reply` (raw bytes), then closes."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                received = b""
                while b"\0" not in received:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    received += chunk
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    "reply",
    [
        b"this is not JSON\0",
        b'{"parameters": []}\0',  # parameters that are not an object
        b'{"parameters": {"status": "no such field"}}\0',  # not the declared reply
        b'{"error": 7}\0',  # an error that names nothing
        b'{"parameters": {}, "continues": true}\0',  # continues on a call without more
    ],
    ids=["not-json", "parameters-not-an-object", "not-the-reply", "bad-error", "continues"],
)
def test_a_reply_that_breaks_the_protocol(open_client: ClientFactory, reply: bytes) -> None:
    with short_tempdir() as base:
        path = base / "peer.sock"
        thread = _one_reply_server(path, reply)
        tl = open_client(path)
        with pytest.raises(TimelinedError) as failed:
            tl.get_status()
        thread.join(10)
    assert isinstance(failed.value, ProtocolError), repr(failed.value)
