"""The AsyncClient behind the blocking Client's interface, so one suite tests both.

Every coroutine runs on an anyio event loop in a thread of its own (a blocking portal); the
async iterators it returns are iterated through the same portal.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Iterator
from typing import Any

from anyio.from_thread import BlockingPortal

from timelined.client import AsyncClient


class PortalIterator:
    """An async generator of the AsyncClient, iterated from blocking code."""

    def __init__(self, portal: BlockingPortal, agen: AsyncGenerator[Any, None]) -> None:
        self._portal = portal
        self._agen = agen

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return self._portal.call(self._agen.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._portal.call(self._agen.aclose)


class PortalClient:
    """AsyncClient's methods as blocking calls (`close` is its `aclose`)."""

    def __init__(self, portal: BlockingPortal, client: AsyncClient) -> None:
        self._portal = portal
        self.client = client

    def close(self) -> None:
        self._portal.call(self.client.aclose)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            if inspect.iscoroutinefunction(method):
                result = self._portal.call(lambda: method(*args, **kwargs))
            else:
                result = method(*args, **kwargs)
            if inspect.isasyncgen(result):
                return PortalIterator(self._portal, result)
            return result

        return call
