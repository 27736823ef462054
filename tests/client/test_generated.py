"""The blocking client is generated from the async one: the file on disk must match."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from types import ModuleType

import pytest

from timelined import client as client_mod

REPO = Path(__file__).resolve().parents[2]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("async_to_sync", REPO / "tools/async_to_sync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_blocking_client_on_disk_is_what_the_tool_generates() -> None:
    tool = _tool()
    generated = tool.generate(tool.SOURCE.read_text())
    assert tool.TARGET.read_text() == generated, (
        "timelined/client_sync.py differs from what tools/async_to_sync.py generates from "
        "timelined/client.py: run `make generate` (and never edit the generated file)"
    )


def test_the_blocking_client_has_every_method_of_the_async_one() -> None:
    for name, method in inspect.getmembers(client_mod.AsyncClient, inspect.isfunction):
        twin = {"__aenter__": "__enter__", "__aexit__": "__exit__", "aclose": "close"}
        blocking = getattr(client_mod.Client, twin.get(name, name))
        params = inspect.signature(method).parameters
        if name != "__init__":  # the blocking one takes a socket timeout as well
            assert inspect.signature(blocking).parameters.keys() == params.keys(), name
        assert not inspect.iscoroutinefunction(blocking), name


def test_the_rewrite_turns_async_code_blocking() -> None:
    source = """
from collections.abc import AsyncGenerator
from timelined.client_sync import Client
from timelined.varlink.client import AsyncVarlinkClient
from timelined.varlink.errors import VarlinkErrorReply

class AsyncThing:
    if True:  # ASYNC
        def __init__(self) -> None:
            self.x = 1
    else:
        def __init__(self, timeout: float) -> None:
            self.x = 2

    async def __aenter__(self) -> AsyncThing:
        return self

    async def each(self, rest: AsyncGenerator[int, None]) -> AsyncGenerator[int, None]:
        async with self:
            async for item in rest:
                yield item
            async for item in rest:
                yield item + 1
        first = await anext(rest)
        await rest.aclose()
"""
    out = _tool().generate(source)
    code = out.split('"""')[2]  # past the module's docstring
    assert "async " not in code and "await" not in code and "anext" not in code
    assert "def __init__(self, timeout: float) -> None:" in out and "self.x = 1" not in out
    assert "def __enter__(self) -> AsyncThing:" in out  # only names of NAMES are mapped
    assert "rest: Generator[int, None, None]" in out
    assert "yield from rest" in out and "for item in rest:\n" in out
    assert "with self:" in out and "first = next(rest)" in out and "rest.close()" in out
    assert "from timelined.client_sync" not in out
    assert "VarlinkErrorReply" not in out  # an import the blocking module does not use
    assert "from collections.abc import Generator\n" in out


def test_an_unmarked_if_true_is_refused() -> None:
    tool = _tool()
    with pytest.raises(tool.GenerateError, match="ASYNC"):
        tool.generate("if True:\n    x = 1\nelse:\n    x = 2\n")
