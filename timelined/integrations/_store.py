"""What every framework adapter does with timelined, over the async client.

A session is one context. Named sessions (the frameworks' `session_id`) get a conversation of
their own, named `<prefix><session_id>`, and use its root context; a session may instead be
bound to any context (a sidebar: its history then begins with what the sidebar inherited).
Items are blocks whose metadata holds the framework's item whole, under one key, so reading it
back is lossless; the block's role and content are for people, search and other tools.

The log is append-only, so removing is writing: `pop` retracts the newest own block
(RetractBlock, event `block.retracted`), and `clear` of a named session archives its
conversation (the items stay auditable there) so the next write starts a new one; `clear` of a
bound context retracts its own blocks.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import Any

from timelined.api.model import HistoryBlock
from timelined.client import AsyncClient
from timelined.commands import MAX_BLOCKS_PER_CALL, NewBlock
from timelined.errors import InvalidTransition

# The largest `limit` GetHistory takes; a larger one asks for the whole history.
_HISTORY_LIMIT_MAX = 100_000
_ROLE_OK = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_PAGE = 1000


def block_role(role: Any, fallback: str) -> str:
    """A block role from a framework's role (or type) name; `fallback` when it is none."""
    if isinstance(role, str) and _ROLE_OK.match(role):
        return role
    return fallback


class ContextStore:
    """One session's context: found or made on first use, then cached.

    `key` is the metadata key that holds each item; `synthesize` turns a block written by
    someone else (a person, another tool, a merge summary) into an item."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        name: str,
        metadata: dict[str, Any],
        key: str,
        synthesize: Callable[[HistoryBlock], Any],
        context_id: str | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.metadata = metadata
        self.key = key
        self.synthesize = synthesize
        self.bound = context_id is not None
        self._context_id = context_id
        self._conversation_id: str | None = None
        self._lock = asyncio.Lock()

    async def context(self, *, create: bool) -> str | None:
        """The session's context; None when it has none yet and `create` is false."""
        if self._context_id is not None:
            return self._context_id
        async with self._lock:
            if self._context_id is None:
                # The oldest live conversation of the name: every process finds the same one,
                # even if two created one at once.
                page = await self.client.list_conversations(name=self.name, limit=1)
                if page.conversations:
                    found = page.conversations[0]
                elif create:
                    found = await self.client.create_conversation(self.name, self.metadata)
                else:
                    return None
                self._conversation_id = found.id
                self._context_id = found.root_context_id
            return self._context_id

    async def append(self, blocks: Sequence[NewBlock]) -> None:
        """One AppendBlocks call (all or none) per MAX_BLOCKS_PER_CALL blocks."""
        if not blocks:
            return
        for start in range(0, len(blocks), MAX_BLOCKS_PER_CALL):
            chunk = blocks[start : start + MAX_BLOCKS_PER_CALL]
            context_id = await self.context(create=True)
            assert context_id is not None
            try:
                await self.client.append_blocks(context_id, chunk)
            except InvalidTransition:
                if self.bound:
                    raise
                # Another instance cleared the session (archived its conversation) since this
                # one looked it up: look again (a new conversation) and write there.
                self._context_id = self._conversation_id = None
                context_id = await self.context(create=True)
                assert context_id is not None
                await self.client.append_blocks(context_id, chunk)

    async def items(self, limit: int | None) -> list[Any]:
        """The latest `limit` items, oldest first (all: None or a negative limit)."""
        if limit == 0:
            return []
        context_id = await self.context(create=False)
        if context_id is None:
            return []
        wanted = None if limit is None or limit < 0 or limit > _HISTORY_LIMIT_MAX else limit
        history = await self.client.get_history(context_id, limit=wanted)
        return [self.item(h) for h in history]

    def item(self, h: HistoryBlock) -> Any:
        stored = h.block.metadata.get(self.key)
        return stored if stored is not None else self.synthesize(h)

    async def pop(self) -> Any | None:
        """Retract the newest of the session's own items and return it (None: it has none;
        inherited blocks belong to the parent and are never retracted from here)."""
        context_id = await self.context(create=False)
        if context_id is None:
            return None
        async with self._lock:  # two pops in this process never return the same item
            last = await self.client.get_history(context_id, limit=1)
            if not last or last[0].inherited:
                return None
            await self.client.retract_block(last[0].block.id, reason="pop_item")
            return self.item(last[0])

    async def clear(self) -> None:
        if not self.bound:
            async with self._lock:
                if self._conversation_id is None:
                    page = await self.client.list_conversations(name=self.name, limit=1)
                    if not page.conversations:
                        return
                    self._conversation_id = page.conversations[0].id
                await self.client.archive_conversation(self._conversation_id, "clear_session")
                self._conversation_id = self._context_id = None
            return
        assert self._context_id is not None
        while True:
            own = await self.client.list_blocks(self._context_id, limit=_PAGE)
            if not own.blocks:
                return
            # Concurrent calls share a connection, pipelined (docs/architecture.md).
            await asyncio.gather(
                *(self.client.retract_block(b.id, reason="clear_session") for b in own.blocks)
            )
