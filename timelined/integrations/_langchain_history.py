"""The LangChain history class itself; imports langchain_core (through `langchain.py`)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict

from timelined.api.model import HistoryBlock
from timelined.client import AsyncClient
from timelined.commands import NewBlock
from timelined.integrations._store import ContextStore, block_role

T = TypeVar("T")

MESSAGE_KEY = "langchain_message"
NAME_PREFIX = "langchain:"
# LangChain's message types as they are usually called in a transcript.
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
_TYPES = {"user": "human", "assistant": "ai", "system": "system", "tool": "tool"}


def message_block(message: BaseMessage) -> NewBlock:
    """One message as a block: role, its text as content, the whole message (message_to_dict)
    in metadata."""
    data = message_to_dict(message)
    text = message.content if isinstance(message.content, str) else message.text
    role = block_role(_ROLES.get(message.type, message.type), "message")
    return NewBlock(role=role, content=str(text), metadata={MESSAGE_KEY: data})


def _synthesized(h: HistoryBlock) -> dict[str, Any]:
    """A block written by someone else, as a message dict (messages_from_dict's form)."""
    kind = _TYPES.get(h.block.role, "human")
    data: dict[str, Any] = {"content": h.block.content}
    if kind == "tool":
        data["tool_call_id"] = h.block.metadata.get("tool_call_id", "")
    return {"type": kind, "data": data}


class _Loop:
    """One event loop on a thread of its own, where the history's client lives: the sync and
    the async methods run the same coroutines on it, so they share one connection pool and
    one view of the session (no second implementation for the blocking side)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="timelined-langchain", daemon=True
        )
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class TimelinedChatMessageHistory(BaseChatMessageHistory):
    """A LangChain chat history stored in timelined: one conversation per `session_id` (named
    `langchain:<session_id>`), or with `context_id` any context (a sidebar: `messages` begins
    with what it inherited). `add_messages` is one AppendBlocks; `clear` archives the
    session's conversation (a bound context: retracts its own messages). Messages round-trip
    exactly (message_to_dict / messages_from_dict)."""

    def __init__(
        self,
        session_id: str,
        *,
        socket: str | os.PathLike[str] | None = None,
        context_id: str | None = None,
    ) -> None:
        super().__init__()
        self.session_id = session_id
        self._socket = socket
        self._context_id = context_id
        self._lock = threading.Lock()
        self._runner: _Loop | None = None
        self._store: ContextStore | None = None

    def _run(self, coro_of: Any) -> Future[Any]:
        """Run `coro_of(store)` on the history's loop (started on first use)."""
        with self._lock:
            if self._runner is None:
                self._runner = _Loop()
                self._store = ContextStore(
                    AsyncClient(self._socket),
                    name=NAME_PREFIX + self.session_id,
                    metadata={"framework": "langchain", "session_id": self.session_id},
                    key=MESSAGE_KEY,
                    synthesize=_synthesized,
                    context_id=self._context_id,
                )
            runner, store = self._runner, self._store
        assert store is not None
        return runner.submit(coro_of(store))

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return messages_from_dict(self._run(lambda s: s.items(None)).result())

    async def aget_messages(self) -> list[BaseMessage]:
        items = await asyncio.wrap_future(self._run(lambda s: s.items(None)))
        return messages_from_dict(items)

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        blocks = [message_block(m) for m in messages]
        self._run(lambda s: s.append(blocks)).result()

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        blocks = [message_block(m) for m in messages]
        await asyncio.wrap_future(self._run(lambda s: s.append(blocks)))

    def clear(self) -> None:
        self._run(lambda s: s.clear()).result()

    async def aclear(self) -> None:
        await asyncio.wrap_future(self._run(lambda s: s.clear()))

    def close(self) -> None:
        """Close the connection and stop the history's thread (a later call starts them
        again)."""
        with self._lock:
            runner, store, self._runner, self._store = self._runner, self._store, None, None
        if runner is not None and store is not None:
            runner.submit(store.client.aclose()).result()
            runner.stop()
