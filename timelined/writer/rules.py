"""The rules: a command, checked against the current state, becomes event(s) or a named refusal.

`execute` runs inside the writer's transaction, under the command's own savepoint: a refusal
raises before anything is emitted (or the savepoint is rolled back), so a refused command leaves
no trace in the log or the state. Every refusal names the current state and what was asked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from timelined import commands as cmd
from timelined import events as ev
from timelined.api.model import Block, Context, Conversation, CrossRef
from timelined.api.timeline import (
    APPENDED_BLOCK_BYTES,
    AppendBlocksReply,
    AppendedBlock,
    AppendResult,
    append_blocks_reply_bound,
)
from timelined.config import LimitsConfig
from timelined.errors import (
    BlockIdConflict,
    ContextNotFound,
    ConversationNotFound,
    CrossConversationMove,
    CycleError,
    ImportRejected,
    InvalidArgument,
    InvalidTransition,
    LimitExceeded,
)
from timelined.ids import new_id, normalize_ts
from timelined.replies import REPLY_ENVELOPE, REPLY_LIMIT, item_size, json_size
from timelined.state import queries as q
from timelined.state.dbapi import DbConn
from timelined.state.lookup import (
    block_or_raise,
    context_or_raise,
    conversation_or_raise,
    crossref_or_raise,
)
from timelined.writer.hotstate import HotContext, HotState

Result = Block | Conversation | Context | AppendResult | AppendBlocksReply | CrossRef


class Tx(Protocol):
    """What the writer gives the rules: its connection, the limits, and a way to emit events."""

    @property
    def conn(self) -> DbConn: ...

    @property
    def limits(self) -> LimitsConfig: ...

    @property
    def hot(self) -> HotState:
        """The writer's cache of what appends check (`hotstate.py`), kept by `emit`."""
        ...

    def emit(self, event: ev.Event, data: bytes | None = None) -> ev.Record:
        """Encode with the next seq, apply to the state, queue the line for the batch's write.

        `data`: the event's `encode_data` bytes when the rule has them already (size check)."""
        ...


# --- lookups that refuse with a named error ----------------------------------------------------


def _context(conn: DbConn, id: str) -> Context:
    # The rules never look at cross-references, and their replies have never carried them.
    return context_or_raise(conn, id, crossrefs=False)


def _writable_conversation(conn: DbConn, ctx: Context, action: str) -> None:
    conv = conversation_or_raise(conn, ctx.conversation_id)
    if conv.status == "archived":
        raise InvalidTransition(
            conv.id, "archived", action, "the conversation is archived (read-only)"
        )


def _require(
    ctx: Context, allowed: tuple[str, ...], action: str, reason: str | None = None
) -> None:
    if ctx.status not in allowed:
        why = reason or f"{action} needs status {' or '.join(allowed)}"
        raise InvalidTransition(ctx.id, ctx.status, action, why)


def check_size(limits: LimitsConfig, event: ev.Event) -> bytes:
    """The event's encoded data (passed on to `emit`: encoded once), or LimitExceeded. `emit`
    checks every event it is not handed the data of; a command checks first when it must
    refuse before anything else (AppendBlocks: every block before the first is written)."""
    data = ev.encode_data(event)
    if len(data) > limits.max_block_bytes:
        raise LimitExceeded("max_block_bytes", len(data), limits.max_block_bytes)
    return data


# --- conversations -----------------------------------------------------------------------------


def _create_conversation(tx: Tx, c: cmd.CreateConversation) -> Conversation:
    event = ev.ConversationCreated(
        conversation_id=new_id("conv"),
        name=c.name,
        root_context_id=new_id("ctx"),
        metadata=c.metadata or {},
    )
    tx.emit(event)  # held to max_block_bytes there
    return conversation_or_raise(tx.conn, event.conversation_id)


def _update_conversation(tx: Tx, c: cmd.UpdateConversation) -> Conversation:
    conv = conversation_or_raise(tx.conn, c.id)
    if conv.status == "archived":
        raise InvalidTransition(c.id, "archived", "update", "an archived conversation is read-only")
    if c.name is None and c.metadata is None:
        raise InvalidArgument("name", "give a new name, new metadata, or both")
    event = ev.ConversationUpdated(conversation_id=c.id, name=c.name, metadata=c.metadata)
    tx.emit(event)  # held to max_block_bytes there
    return conversation_or_raise(tx.conn, c.id)


def _archive_conversation(tx: Tx, c: cmd.ArchiveConversation) -> Conversation:
    conv = conversation_or_raise(tx.conn, c.id)
    if conv.status == "archived":
        raise InvalidTransition(c.id, "archived", "archive", "it is archived already")
    tx.emit(ev.ConversationArchived(conversation_id=c.id, reason=c.reason or ""))
    return conversation_or_raise(tx.conn, c.id)


# --- contexts ----------------------------------------------------------------------------------


def _spawn_sidebar(tx: Tx, c: cmd.SpawnSidebar) -> Context:
    parent = _context(tx.conn, c.parent_id)
    _writable_conversation(tx.conn, parent, "spawn a sidebar from")
    _require(
        parent,
        ("active", "paused"),
        "spawn a sidebar from",
        "a sidebar cannot be spawned from an archived or merged context",
    )
    event = ev.ContextSpawned(
        context_id=new_id("ctx"),
        conversation_id=parent.conversation_id,
        parent_id=parent.id,
        reason=c.reason,
        inherit_last=c.inherit_last or 0,
        parent_blocks=q.own_block_count(tx.conn, parent.id),
    )
    tx.emit(event)
    return _context(tx.conn, event.context_id)


def _pause(tx: Tx, c: cmd.PauseContext) -> Context:
    ctx = _context(tx.conn, c.id)
    _writable_conversation(tx.conn, ctx, "pause")
    _require(ctx, ("active",), "pause")
    tx.emit(ev.ContextPaused(context_id=c.id))
    return _context(tx.conn, c.id)


def _resume(tx: Tx, c: cmd.ResumeContext) -> Context:
    ctx = _context(tx.conn, c.id)
    _writable_conversation(tx.conn, ctx, "resume")
    _require(ctx, ("paused",), "resume")
    tx.emit(ev.ContextResumed(context_id=c.id))
    return _context(tx.conn, c.id)


def _merge(tx: Tx, c: cmd.MergeContext) -> Context:
    ctx = _context(tx.conn, c.id)
    _writable_conversation(tx.conn, ctx, "merge")
    if ctx.parent_id is None:
        raise InvalidTransition(ctx.id, ctx.status, "merge", "a root context cannot be merged")
    _require(ctx, ("active", "paused"), "merge", "only an active or paused sidebar can be merged")
    parent = _context(tx.conn, ctx.parent_id)
    _require(
        parent,
        ("active", "paused"),
        "merge into",
        f"the parent {parent.id!r} is {parent.status} and cannot take the merge",
    )
    event = ev.ContextMerged(
        context_id=ctx.id,
        parent_id=parent.id,
        summary=c.summary or "",
        block_id=new_id("blk"),
        block_count=q.own_block_count(tx.conn, ctx.id),
    )
    tx.emit(event)  # held to max_block_bytes there
    return _context(tx.conn, c.id)


def _archive(tx: Tx, c: cmd.ArchiveContext) -> Context:
    ctx = _context(tx.conn, c.id)
    _writable_conversation(tx.conn, ctx, "archive")
    _require(ctx, ("active", "paused", "merged"), "archive", "it is archived already")
    tx.emit(ev.ContextArchived(context_id=c.id, reason=c.reason or ""))
    return _context(tx.conn, c.id)


def _restore(tx: Tx, c: cmd.RestoreContext) -> Context:
    ctx = _context(tx.conn, c.id)
    _writable_conversation(tx.conn, ctx, "restore")
    _require(ctx, ("archived",), "restore", "only an archived context can be restored")
    tx.emit(ev.ContextRestored(context_id=c.id))
    return _context(tx.conn, c.id)


def _reparent(tx: Tx, c: cmd.ReparentContext) -> Context:
    ctx = _context(tx.conn, c.id)
    target = _context(tx.conn, c.new_parent_id)
    _writable_conversation(tx.conn, ctx, "reparent")
    if target.conversation_id != ctx.conversation_id:
        raise CrossConversationMove(ctx.id, ctx.conversation_id, target.id, target.conversation_id)
    if ctx.id in q.ancestors(tx.conn, target.id):
        raise CycleError(ctx.id, target.id)
    if ctx.parent_id == target.id:
        raise InvalidTransition(
            ctx.id, ctx.status, "reparent", f"it is already a child of {target.id!r}"
        )
    assert ctx.parent_id is not None  # a root is an ancestor of every context: refused above
    tx.emit(
        ev.ContextReparented(
            context_id=ctx.id, old_parent_id=ctx.parent_id, new_parent_id=target.id
        )
    )
    return _context(tx.conn, c.id)


def _focus(tx: Tx, c: cmd.Focus) -> Context:
    ctx = _context(tx.conn, c.context_id)
    _writable_conversation(tx.conn, ctx, "focus")
    _require(ctx, ("active", "paused"), "focus", "only an active or paused context takes focus")
    tx.emit(ev.ContextFocused(context_id=ctx.id))
    return _context(tx.conn, ctx.id)


def _set_tags(tx: Tx, c: cmd.SetTags) -> Context:
    ctx = _context(tx.conn, c.context_id)
    _writable_conversation(tx.conn, ctx, "tag")
    tags = list(dict.fromkeys(c.tags))  # keep the caller's order, drop repeats
    tx.emit(ev.ContextTagged(context_id=ctx.id, tags=tags))
    return _context(tx.conn, ctx.id)


def _add_crossref(tx: Tx, c: cmd.AddCrossRef) -> CrossRef:
    source = _context(tx.conn, c.from_id)
    _context(tx.conn, c.to_id)
    _writable_conversation(tx.conn, source, "add a cross-reference from")
    if c.from_id == c.to_id:
        raise InvalidArgument("to_id", "a context cannot refer to itself")
    ref_id = new_id("xref")
    added = ev.CrossRefAdded(
        ref_id=ref_id, from_id=c.from_id, to_id=c.to_id, kind=c.kind, note=c.note or ""
    )
    _crossrefs_fit(tx, added)
    tx.emit(added)
    found = q.get_crossref(tx.conn, ref_id)
    assert found is not None
    return found


def _crossrefs_fit(tx: Tx, e: ev.CrossRefAdded) -> None:
    """LimitExceeded unless both contexts' cross-references, with `e`'s, still fit the bound
    (so that GetContext can always answer: a reply has no room for thousands of notes)."""
    bound = tx.limits.effective_crossref_bytes()
    ref = CrossRef(
        id=e.ref_id, from_id=e.from_id, to_id=e.to_id, kind=e.kind, note=e.note, created_at=_TS
    )
    size = item_size(ref)
    for context_id in (e.from_id, e.to_id):
        total = q.crossref_bytes(tx.conn, context_id) + size
        if total > bound:
            raise LimitExceeded(
                f"limits.max_crossref_bytes_per_context (the cross-references of {context_id})",
                total,
                bound,
            )


# A timestamp as the writer stamps a record (ids.utc_now): what a new reference's will take.
_TS = "2026-01-01T00:00:00.000000Z"


def _revoke_crossref(tx: Tx, c: cmd.RevokeCrossRef) -> CrossRef:
    found = crossref_or_raise(tx.conn, c.id)
    tx.emit(ev.CrossRefRevoked(ref_id=c.id))
    return found


# --- blocks ------------------------------------------------------------------------------------


def _same_block(stored: Block, wanted: ev.BlockData, timestamp_given: bool) -> bool:
    return (
        stored.context_id == wanted.context_id
        and stored.role == wanted.role
        and stored.content == wanted.content
        and (not timestamp_given or stored.timestamp == wanted.timestamp)
        and stored.time_taken == wanted.time_taken
        and stored.tokens_input == wanted.tokens_input
        and stored.tokens_output == wanted.tokens_output
        and stored.metadata == wanted.metadata
        and stored.sub_blocks == wanted.sub_blocks
    )


def block_from_data(data: ev.BlockData, seq: int, position: int) -> Block:
    """The stored form of a block written by `data` at `seq`."""
    return Block(
        id=data.id,
        context_id=data.context_id,
        role=data.role,
        content=data.content,
        timestamp=data.timestamp,
        seq=seq,
        position=position,
        time_taken=data.time_taken,
        tokens_input=data.tokens_input,
        tokens_output=data.tokens_output,
        metadata=data.metadata,
        sub_blocks=data.sub_blocks,
    )


def _block_data(
    b: cmd.NewBlock, context_id: str, now: str, index: int | None = None
) -> ev.BlockData:
    """The block as it is logged; `index`: its place in an AppendBlocks' `blocks` (named by a
    refusal: `blocks[3].timestamp`)."""
    if b.timestamp is None:
        timestamp = now
    else:
        try:
            timestamp = normalize_ts(b.timestamp)
        except ValueError as exc:
            where = "" if index is None else f"blocks[{index}]."
            raise InvalidArgument(f"{where}timestamp", f"not an ISO 8601 time: {exc}") from exc
    return ev.BlockData(
        id=b.id or new_id("blk"),
        context_id=context_id,
        role=b.role,
        content=b.content,
        timestamp=timestamp,
        time_taken=b.time_taken,
        tokens_input=b.tokens_input,
        tokens_output=b.tokens_output,
        metadata=b.metadata or {},
        sub_blocks=b.sub_blocks or [],
    )


def _stored(tx: Tx, b: cmd.NewBlock, data: ev.BlockData) -> Block | None:
    """The stored block when `b` repeats it (a safe retry); None for a new block;
    BlockIdConflict when its id is stored with other content or in another context."""
    if b.id is None:
        return None
    stored = q.get_block(tx.conn, b.id)
    if stored is None:
        return None
    if _same_block(stored, data, b.timestamp is not None):
        return stored
    raise BlockIdConflict(b.id, stored.context_id)


def _writable_context(tx: Tx, context_id: str) -> HotContext:
    """The context an append goes to, refused unless it and its conversation take blocks.

    From the writer's cache (hotstate.py): no SELECT after the first append to a context. Same
    checks, same order, same errors as `_context`, `_require` and `_writable_conversation`."""
    hot = tx.hot
    ctx = hot.context(tx, context_id)
    if ctx is None:
        raise ContextNotFound(context_id)
    if ctx.status != "active" and ctx.status != "paused":
        raise InvalidTransition(
            ctx.id, ctx.status, "append a block to", "blocks go to active or paused contexts"
        )
    conv_status = hot.conversation_status(tx, ctx.conversation_id)
    if conv_status is None:
        raise ConversationNotFound(ctx.conversation_id)
    if conv_status == "archived":
        raise InvalidTransition(
            ctx.conversation_id,
            "archived",
            "append a block to",
            "the conversation is archived (read-only)",
        )
    return ctx


def _append_block(tx: Tx, c: cmd.AppendBlock, now: str) -> AppendResult:
    data = _block_data(c, c.context_id, now)
    if c.id is not None:
        stored = _stored(tx, c, data)
        if stored is not None:
            return AppendResult(block=stored, seq=stored.seq)  # a safe retry: no new event
    ctx = _writable_context(tx, c.context_id)
    event = ev.BlockAppended(block=data)
    limits = tx.limits
    encoded = check_size(limits, event)
    _check_block_reply_size(limits, encoded)
    position = ctx.blocks + 1  # `emit` moves the cached count on (the writer's `CommandTx`)
    seq = tx.emit(event, encoded).seq
    return AppendResult(block=block_from_data(data, seq, position), seq=seq)


def _check_block_reply_size(limits: LimitsConfig, data: bytes) -> None:
    """LimitExceeded, before anything is written, when AppendBlock's reply could pass
    limits.max_message_bytes. The reply is the event's block (`data`, encoded) with its seq and
    position, in the reply's envelope: at most REPLY_ENVELOPE bytes more. Only a limit set with
    max_block_bytes near or past max_message_bytes meets this: a call that fits one frame, and
    an answer to its committed write that would not (nor the retry's)."""
    size = len(data) + REPLY_ENVELOPE
    if size > limits.max_message_bytes:
        raise LimitExceeded(REPLY_LIMIT, size, limits.max_message_bytes)


def _append_blocks(tx: Tx, c: cmd.AppendBlocks, now: str) -> AppendBlocksReply:
    """All of `c.blocks` or none: every check is made before the first block is emitted (and
    the engine runs the command under a savepoint besides). One BlockAppended per block, at
    consecutive seqs and positions: the log, replay and the verifiers see plain appends.

    Each step is one pass over the blocks (up to MAX_BLOCKS_PER_CALL of them: these passes are
    most of the writer's Python per block, docs/performance.md), in the order of the checks."""
    context_id, blocks = c.context_id, c.blocks
    datas = [_block_data(b, context_id, now, i) for i, b in enumerate(blocks)]
    given_ids = _refuse_repeated_ids(blocks)
    _check_reply_size(tx, datas)
    done = 0
    existed: list[AppendedBlock] = []
    if given_ids:  # with no ids given, no block can be stored already
        stored = [_stored(tx, b, d) for b, d in zip(blocks, datas, strict=True)]
        done = _stored_prefix(tx, context_id, stored)
        existed = [
            AppendedBlock(s.id, s.seq, s.position, True) for s in stored[:done] if s is not None
        ]
        if done == len(stored):
            return AppendBlocksReply(existed)  # a retry: nothing new
        datas = datas[done:]
    ctx = _writable_context(tx, context_id)
    limits = tx.limits
    events = [ev.BlockAppended(block=d) for d in datas]
    encoded = [check_size(limits, event) for event in events]
    emit = tx.emit
    for event, data in zip(events, encoded, strict=True):
        position = ctx.blocks + 1  # `emit` moves the cached count on (the writer's `CommandTx`)
        existed.append(AppendedBlock(event.block.id, emit(event, data).seq, position, False))
    return AppendBlocksReply(existed)


# An id's JSON string at its widest: 128 characters (commands.Id), each escaped as \uXXXX.
_WIDEST_ID = 2 + 6 * 128


def _check_reply_size(tx: Tx, datas: list[ev.BlockData]) -> None:
    """LimitExceeded, before anything is written, when the call's reply could pass
    limits.max_message_bytes: after the write it could only be an error for a committed call.
    The reply has no content, so this refuses only calls of many blocks under a small limit."""
    maximum = tx.limits.max_message_bytes
    if REPLY_ENVELOPE + len(datas) * (APPENDED_BLOCK_BYTES + _WIDEST_ID) <= maximum:
        return  # whatever the ids: the common case, without a pass over them
    size = append_blocks_reply_bound(json_size(d.id) for d in datas)
    if size > maximum:
        raise LimitExceeded(REPLY_LIMIT, size, maximum)


def _refuse_repeated_ids(blocks: list[cmd.NewBlock]) -> bool:
    """InvalidArgument when two blocks give one id; whether any block gives an id."""
    seen: dict[str, int] = {}
    for i, b in enumerate(blocks):
        if b.id is None:
            continue
        first = seen.setdefault(b.id, i)
        if first != i:
            raise InvalidArgument(f"blocks[{i}].id", f"repeats the id of blocks[{first}]")
    return bool(seen)


def _stored_prefix(tx: Tx, context_id: str, stored: list[Block | None]) -> int:
    """How many of the call's blocks are stored already: all (a retry of a call that was
    applied), none, or - only after a crash cut a batch's write short (the log keeps whole
    lines, so a prefix of the call's events may survive) - the context's last blocks, at
    consecutive seqs, as a prefix of the call: the retry appends the rest. Any other mix of
    stored and new blocks is a BlockIdConflict, and nothing is written."""
    done = 0
    while done < len(stored) and stored[done] is not None:
        done += 1
    if done == len(stored) or all(s is None for s in stored):
        return done
    late = next((s for s in stored[done:] if s is not None), None)
    first, last = stored[0], stored[done - 1]
    if late is None and first is not None and last is not None:
        ctx = tx.hot.context(tx, context_id)
        if (
            ctx is not None
            and last.position == ctx.blocks
            and last.seq - first.seq == done - 1
            and last.position - first.position == done - 1
        ):
            return done
    conflict = late or first
    assert conflict is not None
    raise BlockIdConflict(conflict.id, conflict.context_id)


def _retract_block(tx: Tx, c: cmd.RetractBlock) -> Block:
    """Hide a block from its context's history, ListBlocks and search: one `block.retracted`
    event; the block stays in the log, in GetBlock and in exports. Retracting a retracted
    block is a safe retry (no new event); the context must still take blocks (active or
    paused, its conversation not archived), as for an append."""
    block = block_or_raise(tx.conn, c.id)
    if q.is_retracted(tx.conn, c.id):
        return block
    _writable_context(tx, block.context_id)
    tx.emit(ev.BlockRetracted(block_id=c.id, context_id=block.context_id, reason=c.reason or ""))
    return block


def _import(tx: Tx, c: cmd.ImportEvents) -> Conversation:
    first = c.events[0] if c.events else None
    if not isinstance(first, ev.ConversationCreated):
        raise ImportRejected("an import starts with the conversation's creation")
    if c.mode == "keep":
        _refuse_existing(tx.conn, c.events)
    for event in c.events:
        if isinstance(event, ev.CrossRefAdded):  # made under another daemon's limits
            _crossrefs_fit(tx, event)
        tx.emit(event)  # held to max_block_bytes there, as every event is
    return conversation_or_raise(tx.conn, first.conversation_id)


def _refuse_existing(conn: DbConn, events: list[ev.Event]) -> None:
    """In "keep" mode every id must be new here: an import never overwrites."""
    for e in events:
        if isinstance(e, ev.ConversationCreated) and q.get_conversation(conn, e.conversation_id):
            raise ImportRejected(f"conversation {e.conversation_id!r} already exists here")
        if isinstance(e, ev.ContextSpawned) and q.get_context(conn, e.context_id, crossrefs=False):
            raise ImportRejected(f"context {e.context_id!r} already exists here")
        if isinstance(e, ev.BlockAppended) and q.get_block(conn, e.block.id):
            raise ImportRejected(f"block {e.block.id!r} already exists here")


_RULES: dict[type, Callable[[Tx, Any], Result]] = {
    cmd.CreateConversation: _create_conversation,
    cmd.UpdateConversation: _update_conversation,
    cmd.ArchiveConversation: _archive_conversation,
    cmd.SpawnSidebar: _spawn_sidebar,
    cmd.PauseContext: _pause,
    cmd.ResumeContext: _resume,
    cmd.MergeContext: _merge,
    cmd.ArchiveContext: _archive,
    cmd.RestoreContext: _restore,
    cmd.ReparentContext: _reparent,
    cmd.Focus: _focus,
    cmd.SetTags: _set_tags,
    cmd.AddCrossRef: _add_crossref,
    cmd.RevokeCrossRef: _revoke_crossref,
    cmd.RetractBlock: _retract_block,
    cmd.ImportEvents: _import,
}


def execute(tx: Tx, command: cmd.Command, now: str) -> Result:
    """Check `command` against the state and emit its events; raises a TimelinedError to refuse."""
    if isinstance(command, cmd.AppendBlock):
        return _append_block(tx, command, now)
    if isinstance(command, cmd.AppendBlocks):
        return _append_blocks(tx, command, now)
    return _RULES[type(command)](tx, command)
