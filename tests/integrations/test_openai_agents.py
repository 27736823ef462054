"""TimelinedSession against the SDK's own SQLiteSession, on a real daemon: one scenario run
against both, every answer compared (order, limit semantics, pop, clear)."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest

from tests.daemon.harness import DaemonProcess
from timelined.client import AsyncClient
from timelined.integrations.openai_agents import ITEM_KEY, TimelinedSession

agents = pytest.importorskip("agents")
from agents.memory import SQLiteSession  # noqa: E402
from agents.memory.session import Session  # noqa: E402

ITEMS: list[Any] = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "type": "function_call",
        "call_id": "call_1",
        "name": "weather",
        "arguments": '{"city": "Paris"}',
    },
    {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21 °C"},
    {
        "role": "assistant",
        "type": "message",
        "status": "completed",
        "id": "msg_1",
        "content": [{"type": "output_text", "text": "Sunny, 21 °C.", "annotations": []}],
    },
    {"role": "user", "content": [{"type": "input_text", "text": "And tomorrow? ☔"}]},
]


async def scenario(session: Any) -> list[Any]:
    """What the SDK's documentation promises, step by step; every answer recorded."""
    seen: list[Any] = [await session.get_items(), await session.pop_item()]
    await session.add_items(ITEMS[:2])
    await session.add_items([])
    await session.add_items(ITEMS[2:])
    seen.append(await session.get_items())
    for limit in (1, 2, 5, 9, 0):
        seen.append(await session.get_items(limit))
    seen.append(await session.pop_item())  # the most recent item
    seen.append(await session.pop_item())
    seen.append(await session.get_items())
    await session.add_items([ITEMS[0]])
    seen.append(await session.get_items(2))
    await session.clear_session()
    seen += [await session.get_items(), await session.pop_item()]
    await session.add_items(ITEMS[3:4])  # a cleared session takes new items
    seen.append(await session.get_items())
    return seen


def test_the_same_scenario_gives_the_same_answers_as_sqlite_session(
    daemon: DaemonProcess,
) -> None:
    async def go() -> None:
        want = await scenario(SQLiteSession("s1"))
        async with AsyncClient(daemon.socket_path) as client:
            session = TimelinedSession(f"s-{uuid.uuid4()}", client)
            assert isinstance(session, Session)  # the SDK's runtime-checkable protocol
            got = await scenario(session)
        assert got == want
        assert want[2] == ITEMS and want[3] == ITEMS[-1:] and want[7] == []

    anyio.run(go)


class CountingClient(AsyncClient):
    calls: list[str]

    async def _call(self, method: str, params: Any, reply: type[Any]) -> Any:
        self.calls.append(method.rsplit(".", 1)[1])
        return await super()._call(method, params, reply)


def test_add_items_is_one_append_blocks_and_items_are_blocks(daemon: DaemonProcess) -> None:
    async def go() -> None:
        async with CountingClient(daemon.socket_path) as client:
            client.calls = []
            session = TimelinedSession(f"s-{uuid.uuid4()}", client)
            await session.add_items(ITEMS)
            assert client.calls == ["ListConversations", "CreateConversation", "AppendBlocks"]
            client.calls.clear()
            await session.add_items(ITEMS)
            assert client.calls == ["AppendBlocks"]
            blocks = (await client.list_blocks(await session.context_id())).blocks
            assert [b.role for b in blocks[:5]] == [
                "user",
                "function_call",
                "function_call_output",
                "assistant",
                "user",
            ]
            assert [b.content for b in blocks[:5]] == [
                "What is the weather in Paris?",
                '{"city": "Paris"}',
                "sunny, 21 °C",
                "Sunny, 21 °C.",
                "And tomorrow? ☔",
            ]
            assert [b.metadata[ITEM_KEY] for b in blocks[:5]] == ITEMS
            conv = await client.list_conversations(name=f"openai-agents:{session.session_id}")
            assert len(conv.conversations) == 1

    anyio.run(go)


def test_pop_and_clear_keep_the_log_append_only(daemon: DaemonProcess) -> None:
    async def go() -> None:
        async with AsyncClient(daemon.socket_path) as client:
            session = TimelinedSession(f"s-{uuid.uuid4()}", client)
            await session.add_items(ITEMS[:3])
            first = await session.context_id()
            assert await session.pop_item() == ITEMS[2]
            everything = await client.list_blocks(first, include_retracted=True)
            assert len(everything.blocks) == 3  # the popped item is retracted, not deleted
            await session.clear_session()
            old = await client.get_context(first)
            archived = await client.get_conversation(old.conversation_id)
            assert archived.status == "archived" and archived.archive_reason == "clear_session"
            assert [h.block.metadata[ITEM_KEY] for h in await client.get_history(first)] == (
                ITEMS[:2]
            )
            await session.add_items(ITEMS[3:])
            assert await session.context_id() != first
            # Another instance with the same id finds the new conversation.
            again = TimelinedSession(session.session_id, client)
            assert await again.get_items() == ITEMS[3:]
            # ... and a stale instance that writes after a clear moves on to the new one.
            await again.clear_session()
            await session.add_items(ITEMS[:1])
            assert await again.get_items() == ITEMS[:1]

    anyio.run(go)


def test_a_sidebar_session_starts_with_the_parents_last_items(daemon: DaemonProcess) -> None:
    async def go() -> None:
        async with AsyncClient(daemon.socket_path) as client:
            parent = TimelinedSession(f"s-{uuid.uuid4()}", client)
            await parent.add_items(ITEMS[:4])
            side = await parent.sidebar("look into the forecast", inherit_last=2)
            assert await side.get_items() == ITEMS[2:4]
            await side.add_items([ITEMS[4]])
            assert await side.get_items() == ITEMS[2:5]
            assert await side.get_items(1) == [ITEMS[4]]
            assert await parent.get_items() == ITEMS[:4]  # the sidebar's items stay there
            assert await side.pop_item() == ITEMS[4]
            assert await side.pop_item() is None  # inherited items are the parent's
            assert await parent.get_items() == ITEMS[:4]
            await side.add_items([ITEMS[0]])
            await side.clear_session()  # a bound context: its own items are retracted
            assert await side.get_items() == ITEMS[2:4]
            assert await parent.get_items() == ITEMS[:4]

    anyio.run(go)


def test_session_settings_limit_is_the_default_limit(daemon: DaemonProcess) -> None:
    from agents.memory import SessionSettings

    async def go() -> None:
        async with AsyncClient(daemon.socket_path) as client:
            session = TimelinedSession(
                f"s-{uuid.uuid4()}", client, session_settings=SessionSettings(limit=2)
            )
            reference = SQLiteSession("s2", session_settings=SessionSettings(limit=2))
            for s in (session, reference):
                await s.add_items(ITEMS)
            assert await session.get_items() == await reference.get_items() == ITEMS[-2:]
            assert await session.get_items(3) == ITEMS[-3:]

    anyio.run(go)
