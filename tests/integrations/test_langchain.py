"""TimelinedChatMessageHistory against LangChain's InMemoryChatMessageHistory, on a real
daemon: the same scenario, sync and async, the same messages back."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest

from tests.daemon.harness import DaemonProcess
from timelined.api.model import Conversation
from timelined.client import AsyncClient

pytest.importorskip("langchain_core")
from langchain_core.chat_history import (
    BaseChatMessageHistory,
    InMemoryChatMessageHistory,
)
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from timelined.integrations.langchain import TimelinedChatMessageHistory

# The reference implementation is deprecated (LangChain 1.6.4) but still documents the contract.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MESSAGES: list[BaseMessage] = [
    SystemMessage("You are terse."),
    HumanMessage("Weather in Paris?", id="h1", additional_kwargs={"lang": "en"}),
    AIMessage(
        "",
        tool_calls=[{"name": "weather", "args": {"city": "Paris"}, "id": "call_1"}],
        response_metadata={"model": "m"},
    ),
    ToolMessage("sunny, 21 °C", tool_call_id="call_1"),
    AIMessage([{"type": "text", "text": "Sunny ☀"}], name="bot"),
]


def scenario(history: BaseChatMessageHistory) -> list[Any]:
    seen: list[Any] = [list(history.messages)]
    history.add_messages(MESSAGES[:2])
    history.add_messages(MESSAGES[2:])
    seen.append(list(history.messages))
    history.add_user_message("again")
    seen.append(list(history.messages))
    history.clear()
    seen.append(list(history.messages))
    history.add_ai_message("after the clear")
    seen.append(list(history.messages))
    return seen


async def ascenario(history: BaseChatMessageHistory) -> list[Any]:
    seen: list[Any] = [list(await history.aget_messages())]
    await history.aadd_messages(MESSAGES)
    seen.append(list(await history.aget_messages()))
    await history.aclear()
    seen.append(list(await history.aget_messages()))
    await history.aadd_messages(MESSAGES[1:2])
    seen.append(list(await history.aget_messages()))
    return seen


def test_sync_scenario_matches_the_in_memory_history(daemon: DaemonProcess) -> None:
    want = scenario(InMemoryChatMessageHistory())
    history = TimelinedChatMessageHistory(f"lc-{uuid.uuid4()}", socket=daemon.socket_path)
    try:
        got = scenario(history)
    finally:
        history.close()
    assert got == want
    assert got[1] == MESSAGES  # lossless: ids, kwargs, tool calls, content lists


def test_async_scenario_matches_the_in_memory_history(daemon: DaemonProcess) -> None:
    async def go() -> None:
        want = await ascenario(InMemoryChatMessageHistory())
        history = TimelinedChatMessageHistory(f"lc-{uuid.uuid4()}", socket=daemon.socket_path)
        try:
            got = await ascenario(history)
            # The sync and async sides share one view: what one wrote the other reads.
            history.add_messages(MESSAGES[:1])
            assert await history.aget_messages() == [MESSAGES[1], MESSAGES[0]]
        finally:
            history.close()
        assert got == want

    anyio.run(go)


async def _session_with_messages(daemon: DaemonProcess, client: AsyncClient) -> Conversation:
    """A new session holding MESSAGES (one aadd_messages); its conversation."""
    session_id = f"lc-{uuid.uuid4()}"
    history = TimelinedChatMessageHistory(session_id, socket=daemon.socket_path)
    try:
        await history.aadd_messages(MESSAGES)
    finally:
        history.close()
    (conv,) = (await client.list_conversations(name=f"langchain:{session_id}")).conversations
    return conv


def test_messages_are_blocks_with_roles(daemon: DaemonProcess) -> None:
    async def go() -> None:
        async with AsyncClient(daemon.socket_path) as client:
            conv = await _session_with_messages(daemon, client)
            blocks = (await client.list_blocks(conv.root_context_id)).blocks
        assert [(b.role, b.content) for b in blocks] == [
            ("system", "You are terse."),
            ("user", "Weather in Paris?"),
            ("assistant", ""),
            ("tool", "sunny, 21 °C"),
            ("assistant", "Sunny ☀"),
        ]
        # One AppendBlocks: consecutive seqs in one batch.
        assert [b.seq for b in blocks] == list(range(blocks[0].seq, blocks[0].seq + 5))

    anyio.run(go)


def test_a_bound_sidebar_history_starts_with_the_parents_last_messages(
    daemon: DaemonProcess,
) -> None:
    async def go() -> None:
        async with AsyncClient(daemon.socket_path) as client:
            conv = await _session_with_messages(daemon, client)
            side = await client.spawn_sidebar(conv.root_context_id, "tangent", inherit_last=2)
            # A block written by another tool is read back as a message of its role.
            await client.append_block(side.id, "user", "typed by a person")
        history = TimelinedChatMessageHistory("side", socket=daemon.socket_path, context_id=side.id)
        try:
            got = await history.aget_messages()
            assert got == [*MESSAGES[3:], HumanMessage("typed by a person")]
            await history.aclear()
            assert await history.aget_messages() == MESSAGES[3:]
        finally:
            history.close()

    anyio.run(go)
