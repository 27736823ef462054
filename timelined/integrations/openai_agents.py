"""timelined as an OpenAI Agents SDK session: `TimelinedSession` (docs/integrations.md).

The SDK's `Session` is a structural protocol (`agents.memory.session.Session`, which the SDK
asks third-party stores to implement rather than subclass `SessionABC`): this module imports
nothing of `agents` at run time, only for type checking. Items are the SDK's input items (JSON
objects); each is one block, the item kept whole in the block's metadata under
`openai_agents_item`.

    session = TimelinedSession("user-42")            # $TIMELINED_SOCKET, or the config's socket
    result = await Runner.run(agent, "Hello", session=session)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from timelined.api.model import HistoryBlock
from timelined.client import AsyncClient
from timelined.commands import NewBlock
from timelined.integrations._store import ContextStore, block_role

if TYPE_CHECKING:
    from agents.items import TResponseInputItem
    from agents.memory.session_settings import SessionSettings
else:
    TResponseInputItem = dict[str, Any]
    SessionSettings = Any

ITEM_KEY = "openai_agents_item"
NAME_PREFIX = "openai-agents:"
_MESSAGE_ROLES = ("user", "assistant", "system", "developer")


def item_block(item: TResponseInputItem) -> NewBlock:
    """The block of one item: role (the message's role, else the item's type), content (its
    text, for people and search), and the whole item in metadata."""
    data: dict[str, Any] = dict(item)
    role = block_role(data.get("role"), block_role(data.get("type"), "item"))
    return NewBlock(role=role, content=_text(data), metadata={ITEM_KEY: data})


def _text(item: dict[str, Any]) -> str:
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    for key in ("output", "arguments", "text"):
        value = item.get(key)
        if isinstance(value, str):
            return value
    return ""


def _synthesized(h: HistoryBlock) -> TResponseInputItem:
    """A block not written through this adapter (a person's, a merge summary), as a message."""
    role = h.block.role if h.block.role in _MESSAGE_ROLES else "user"
    item: Any = {"role": role, "content": h.block.content}
    return item  # type: ignore[no-any-return]


class TimelinedSession:
    """An OpenAI Agents SDK session stored in timelined: one conversation per `session_id`
    (named `openai-agents:<session_id>`, found by name, made on the first `add_items`), or,
    with `context_id`, any context (a sidebar: `get_items` then includes what it inherited).

    `add_items` is one AppendBlocks (all or none); `pop_item` retracts the newest own item
    (RetractBlock); `clear_session` archives the session's conversation (the next items start
    a new one) or, for a bound context, retracts its own items. Nothing is ever deleted."""

    def __init__(
        self,
        session_id: str,
        client: AsyncClient | None = None,
        *,
        socket: str | os.PathLike[str] | None = None,
        context_id: str | None = None,
        session_settings: SessionSettings | None = None,
    ) -> None:
        self.session_id = session_id
        self.session_settings = session_settings
        self._own_client = client is None
        self.client = client if client is not None else AsyncClient(socket)
        self._store = ContextStore(
            self.client,
            name=NAME_PREFIX + session_id,
            metadata={"framework": "openai-agents", "session_id": session_id},
            key=ITEM_KEY,
            synthesize=_synthesized,
            context_id=context_id,
        )

    async def context_id(self) -> str:
        """The session's context (its conversation is made now if it has none yet)."""
        found = await self._store.context(create=True)
        assert found is not None
        return found

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The latest `limit` items in chronological order (all when None; `limit` None
        falls back to `session_settings.limit`, as the SDK's own sessions do)."""
        if limit is None and self.session_settings is not None:
            limit = _settings_limit(self.session_settings)
        items: list[TResponseInputItem] = await self._store.items(limit)
        return items

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        await self._store.append([item_block(i) for i in items])

    async def pop_item(self) -> TResponseInputItem | None:
        item: TResponseInputItem | None = await self._store.pop()
        return item

    async def clear_session(self) -> None:
        await self._store.clear()

    async def sidebar(self, reason: str, inherit_last: int = 0) -> TimelinedSession:
        """A session on a new sidebar of this one's context (SpawnSidebar): its items begin
        with this session's last `inherit_last` items, and what it adds stays in the sidebar."""
        side = await self.client.spawn_sidebar(await self.context_id(), reason, inherit_last)
        return TimelinedSession(
            f"{self.session_id}/{side.id}",
            self.client,
            context_id=side.id,
            session_settings=self.session_settings,
        )

    async def aclose(self) -> None:
        """Close the client this session made (a client passed in is the caller's)."""
        if self._own_client:
            await self.client.aclose()


def _settings_limit(settings: Any) -> int | None:
    value = (
        settings.get("limit") if isinstance(settings, dict) else getattr(settings, "limit", None)
    )
    return value if isinstance(value, int) else None
