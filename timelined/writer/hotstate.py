"""The writer's in-memory view of what an AppendBlock's checks read, per context.

An append needs, for its context: does it exist, its status, its conversation (and that
conversation's status), and its own block count (the next block's position). Reading that from
SQLite costs two SELECTs per append (one with a `max(position)` subquery); this cache answers
from memory after the first append to a context.

Correctness rests on three rules, all enforced by the engine (`engine.py`):

- Only the writer owns it and only the writer changes the state, so every change passes through
  `observe` (the writer calls it for every event it applies, right after `apply` or after
  staging the block's row). A
  `block.appended` moves its context's count by one; any other event type clears the whole
  cache (they are rare next to appends, and a full clear cannot miss a status, a reparent, a
  merge block or an archived conversation).
- What is cached always describes the state inside the writer's open transaction. Whenever
  anything is undone — a command's savepoint rolled back, the batch refused (full disk) or
  failed — it is undone through the engine's one rollback path (`Engine._rollback`), which
  clears the cache, so a refused command or a failed batch leaves no trace in the cache either.
  Between batches the cache equals the committed state.
- Anything that may change the database behind the writer (`Engine.paused`, a swapped
  connection, another process's commit) clears it too (`Engine._forget_cache`).

Misses are never cached (an unknown id is looked up again), and the cache is bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from timelined.events import BlockAppended, Event
from timelined.state.dbapi import DbConn

MAX_ENTRIES = 20_000  # contexts (or conversations); a full cache is simply emptied


class HotContext:
    """What an append to a context checks, and the position its next block takes."""

    __slots__ = ("blocks", "conversation_id", "id", "status")

    def __init__(self, id: str, status: str, conversation_id: str, blocks: int) -> None:
        self.id = id
        self.status = status
        self.conversation_id = conversation_id
        self.blocks = blocks  # own blocks = max(position): the next block is blocks + 1


class Reader(Protocol):
    """Where a miss reads from: asked for its connection only on a miss, so that the writer
    can insert the rows it staged first (batch.py's `CommandTx.conn`)."""

    @property
    def conn(self) -> DbConn: ...


class HotState:
    __slots__ = ("_contexts", "_conversations", "cached")

    def __init__(self) -> None:
        self._contexts: dict[str, HotContext] = {}
        self._conversations: dict[str, str] = {}
        # The context if cached, without reading the state: the dict's own `get` (the writer
        # asks once per block it stages; no Python frame). `_contexts` is never replaced.
        self.cached: Callable[[str], HotContext | None] = self._contexts.get

    def context(self, reader: Reader, id: str) -> HotContext | None:
        hit = self._contexts.get(id)
        if hit is not None:
            return hit
        row = reader.conn.execute(
            "SELECT status, conversation_id, "
            "(SELECT coalesce(max(position), 0) FROM blocks WHERE context_id = ?1) "
            "FROM contexts WHERE id = ?1",
            (id,),
        ).fetchone()
        if row is None:
            return None
        if len(self._contexts) >= MAX_ENTRIES:
            self._contexts.clear()
        hit = self._contexts[id] = HotContext(id, row[0], row[1], int(row[2]))
        return hit

    def conversation_status(self, reader: Reader, id: str) -> str | None:
        status = self._conversations.get(id)
        if status is not None:
            return status
        row = reader.conn.execute("SELECT status FROM conversations WHERE id = ?", (id,)).fetchone()
        if row is None:
            return None
        if len(self._conversations) >= MAX_ENTRIES:
            self._conversations.clear()
        status = self._conversations[id] = str(row[0])
        return status

    def observe(self, event: Event) -> None:
        """Keep the cache equal to the state after `event` was applied."""
        if type(event) is BlockAppended:
            hit = self._contexts.get(event.block.context_id)
            if hit is not None:
                hit.blocks += 1
        elif self._contexts or self._conversations:
            self.clear()

    def clear(self) -> None:
        self._contexts.clear()
        self._conversations.clear()

    def __len__(self) -> int:
        return len(self._contexts) + len(self._conversations)
