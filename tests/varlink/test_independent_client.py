"""The independent `varlink` package (PyPI) as the client: the server speaks real Varlink.

The package is synchronous, so its calls run in a worker thread (or, for its command line, in
a process of its own) while the server runs in the test's event loop.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import varlink

from tests.varlink.demo import TEST, serving


def _open(path: Path, interface: str = "io.timelined.Test") -> Any:
    client = varlink.Client(address=f"unix:{path}")
    return client, client.open(interface)


def declared_error(client: Any, name: str) -> bool:
    """Whether `name` (`interface.Error`) is an error its interface declares, in the interface
    description the service itself serves (GetInterfaceDescription, parsed by this package)."""
    interface, _, member = name.rpartition(".")
    parsed = client.get_interface(interface)
    return isinstance(parsed.members.get(member), varlink.scanner._Error)


async def test_calls_streams_and_named_errors(tmp_path: Path) -> None:
    async with serving(tmp_path) as r:

        def work() -> dict[str, Any]:
            client, con = _open(r.path)
            with client, con:
                out: dict[str, Any] = {"echo": con.Echo("hey", 2)}
                out["count"] = [m["i"] for m in con.Count(4, _more=True)]
                try:
                    con.Fail("ctx_x")
                except varlink.VarlinkError as e:
                    out["fail"] = (e.error(), e.parameters())
                    out["fail declared"] = declared_error(client, e.error())
                try:
                    con.Unimplemented()
                except varlink.VarlinkError as e:
                    out["unimplemented"] = (e.error(), e.parameters())
                out["echo_after_errors"] = con.Echo("again")
            return out

        out = await anyio.to_thread.run_sync(work)
    assert out["echo"] == {"text": "heyhey"}
    assert out["count"] == [0, 1, 2, 3]
    # Named by the called method's interface, which declares it: a client matches it by the
    # interface it called, as the Varlink spec has it.
    assert out["fail"] == (
        "io.timelined.Test.ContextNotFound",
        {"id": "ctx_x", "message": "no context with id 'ctx_x'"},
    )
    assert out["fail declared"]
    assert out["unimplemented"] == (
        "org.varlink.service.MethodNotImplemented",
        {"method": "io.timelined.Test.Unimplemented"},
    )
    assert out["echo_after_errors"] == {"text": "again"}


async def test_getinfo_and_interface_description(tmp_path: Path) -> None:
    async with serving(tmp_path) as r:

        def work() -> tuple[list[str], dict[str, Any], str, list[str]]:
            with varlink.Client(address=f"unix:{r.path}") as client:
                interfaces = client.get_interfaces()
                info = client.info
                parsed = client.get_interface("io.timelined.Test")
                service = client.get_interface("org.varlink.service")
                return interfaces, info, parsed.description, list(service.members)

        interfaces, info, description, service = await anyio.to_thread.run_sync(work)
    assert interfaces == ["org.varlink.service", "io.timelined.Test"]
    assert info["vendor"] == "timelined"
    assert description == TEST.description
    assert service[-2:] == ["PermissionDenied", "ExpectedMore"]  # the standard's, all of it


async def test_unknown_interface_and_method(tmp_path: Path) -> None:
    async with serving(tmp_path) as r:

        def work() -> tuple[Any, Any]:
            with varlink.Client(address=f"unix:{r.path}") as client:
                try:
                    client.open("io.timelined.Missing")
                except varlink.VarlinkError as e:
                    missing = (e.error(), e.parameters())
                # The client only calls methods it knows: teach it one the server lacks.
                extended = varlink.Interface(TEST.description + "\nmethod Extra() -> ()\n")
                sock = client.open_connection()
                with varlink.client.SimpleClientInterfaceHandler(extended, sock) as con:
                    try:
                        con.Extra()
                    except varlink.VarlinkError as e:
                        extra = (e.error(), e.parameters())
                return missing, extra

        missing, extra = await anyio.to_thread.run_sync(work)
    assert missing == (
        "org.varlink.service.InterfaceNotFound",
        {"interface": "io.timelined.Missing"},
    )
    assert extra == ("org.varlink.service.MethodNotFound", {"method": "io.timelined.Test.Extra"})


async def test_raw_blocking_socket_frames(tmp_path: Path) -> None:
    """Frames written by hand on a plain socket, as any other implementation would."""
    async with serving(tmp_path) as r:

        def work() -> list[Any]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(os.fspath(r.path))
                s.sendall(
                    b'{"method":"io.timelined.Test.Echo","parameters":{"text":7}}\0'
                    b'{"method":"org.varlink.service.GetInfo"}\0'
                )
                buf = b""
                while buf.count(b"\0") < 2:
                    buf += s.recv(65536)
            return [json.loads(f) for f in buf.split(b"\0") if f]

        replies = await anyio.to_thread.run_sync(work)
    assert replies[0]["error"] == "org.varlink.service.InvalidParameter"
    assert replies[0]["parameters"]["parameter"] == "text"
    assert replies[1]["parameters"]["product"] == "test"


@pytest.mark.parametrize("more", [False, True])
async def test_varlink_command_line_in_another_process(tmp_path: Path, more: bool) -> None:
    async with serving(tmp_path) as r:
        args = [sys.executable, "-m", "varlink.cli", "call"]
        if more:
            args += ["--more", f"unix:{r.path}/io.timelined.Test.Count", '{"n": 3}']
        else:
            args += [f"unix:{r.path}/io.timelined.Test.Echo", '{"text": "from afar"}']
        result = await anyio.run_process(args, check=False)
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    docs, pos, decoder = [], 0, json.JSONDecoder()
    while out[pos:].strip():
        doc, pos = decoder.raw_decode(out, pos + len(out[pos:]) - len(out[pos:].lstrip()))
        docs.append(doc)
    assert docs == ([{"i": 0}, {"i": 1}, {"i": 2}] if more else [{"text": "from afar"}])
