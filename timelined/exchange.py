"""Export and import of a conversation, with the audit events that prove it.

An export is a stream of parts: a header (the conversation and its tree), the audit events
behind them exactly as the log holds them (so each line's hash can be checked by the log-format
rule), the blocks, and an end part with counts. `timelinectl export` writes one part per line.

An importer trusts nothing in the document: every event line must carry its own correct hash,
and replaying the events (with the same `apply` the daemon uses) must give exactly the
conversation, tree and blocks the document claims. Only then is the history re-created in the
importing daemon through normal events, each naming the event it reproduces (`original_hash`),
the conversation naming its source (`imported_from`). Ids are new (mode "new") or kept ("keep").
"""

from __future__ import annotations

import sqlite3
from collections.abc import Generator
from typing import Any

import msgspec

from timelined import __version__
from timelined import commands as cmd
from timelined import events as ev
from timelined.api.exchange import (
    ExportDocument,
    ExportEnd,
    ExportHeader,
    ExportPart,
    ImportMode,
)
from timelined.api.model import Context
from timelined.auditlog.record import RecordError, decode_content
from timelined.auditlog.source import LogSource
from timelined.errors import ImportRejected
from timelined.events import Record
from timelined.ids import new_id, normalize_ts, utc_now
from timelined.replies import ReplyBudget, handed, item_size, json_size
from timelined.state import queries as q
from timelined.state.apply import apply
from timelined.state.db import open_scratch
from timelined.state.lookup import conversation_or_raise

FORMAT = "timelined-export/1"
EVENTS_PER_PART = 500
BLOCKS_PER_PART = 500
PART_BYTES = 4 * 2**20  # a part closes early past this: big blocks make fewer per part


# --- which events concern a conversation -------------------------------------------------------


class _Membership:
    """Tracks the ids of one conversation while its events stream by, in log order."""

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.contexts: set[str] = set()
        self.refs: set[str] = set()

    def concerns(self, event: ev.Event) -> bool:
        if isinstance(event, ev.ConversationCreated):
            if event.conversation_id == self.conversation_id:
                self.contexts.add(event.root_context_id)
                return True
            return False
        if isinstance(event, ev.ConversationUpdated | ev.ConversationArchived):
            return event.conversation_id == self.conversation_id
        if isinstance(event, ev.ContextSpawned):
            if event.conversation_id == self.conversation_id:
                self.contexts.add(event.context_id)
                return True
            return False
        if isinstance(event, ev.BlockAppended):
            return event.block.context_id in self.contexts
        if isinstance(event, ev.CrossRefAdded):
            if event.from_id in self.contexts:
                self.refs.add(event.ref_id)
                return True
            return False
        if isinstance(event, ev.CrossRefRevoked):
            return event.ref_id in self.refs
        return getattr(event, "context_id", None) in self.contexts


def export_parts(
    conn: sqlite3.Connection,
    log: LogSource,
    conversation_id: str,
    upto_seq: int,
    head_hash: str,
    part_bytes: int | None = None,
) -> Generator[ExportPart, None, None]:
    """The parts of an export at seq `upto_seq`, streaming (memory does not grow with size).

    `conn` is a read connection inside one snapshot whose last seq is `upto_seq`. Each part of
    events or blocks holds at most `part_bytes` (the reply limit) and `PART_BYTES`.
    """
    conversation = conversation_or_raise(conn, conversation_id)
    created = conn.execute(
        "SELECT created_seq FROM conversations WHERE id = ?", (conversation_id,)
    ).fetchone()[0]
    part = min(PART_BYTES, part_bytes) if part_bytes else PART_BYTES
    header = ExportHeader(
        format=FORMAT,
        exported_at=utc_now(),
        source_version=__version__,
        source_last_seq=upto_seq,
        source_head_hash=head_hash,
        conversation=conversation,
        contexts=[],
    )
    # The tree as far as the header's part holds it; the rest in parts of their own.
    budget = ReplyBudget(part)
    budget.take(item_size(header))
    contexts, more = q.tree_page(conn, conversation_id, budget=budget)
    yield ExportPart(header=msgspec.structs.replace(header, contexts=contexts))
    while more is not None:
        contexts, more = q.tree_page(conn, conversation_id, after=more, budget=ReplyBudget(part))
        yield ExportPart(contexts=contexts)
    members = _Membership(conversation_id)
    batch: list[str] = []
    budget = ReplyBudget(part)
    events = 0
    # A part is handed over, not kept (`replies.handed`): while it waits in the socket of a
    # client that does not read, nothing here holds it again, nor the event that starts the
    # next part but as its text.
    for _, line in log.lines(created - 1, upto_seq):
        content = line[:-1]
        del line
        record = decode_content(content)
        if members.concerns(record.event):
            text = content.decode()
            del content, record
            size = json_size(text) + 1
            if not budget.add(size):  # the part closes before it, which starts the next
                yield ExportPart(events=handed(batch))
                budget = ReplyBudget(part)
                budget.add(size)
            batch.append(text)
            del text
            events += 1
            if len(batch) >= EVENTS_PER_PART:
                yield ExportPart(events=handed(batch))
                budget = ReplyBudget(part)
    if batch:
        yield ExportPart(events=handed(batch))
    blocks = 0
    for ctx_id in sorted(members.contexts):
        after: int | None = None
        while True:
            page, after = q.list_blocks(
                conn, ctx_id, limit=BLOCKS_PER_PART, after=after, budget=ReplyBudget(part)
            )
            if page:
                blocks += len(page)
                yield ExportPart(blocks=handed(page))
            if after is None:
                break
    yield ExportPart(end=ExportEnd(events=events, blocks=blocks))


# --- import ------------------------------------------------------------------------------------


def verify_document(doc: ExportDocument) -> list[Record]:
    """Check an export against itself; returns its records, or raises ImportRejected."""
    h = doc.header
    if h.format != FORMAT:
        raise ImportRejected(f"unknown format {h.format!r}; this daemon reads {FORMAT!r}")
    records: list[Record] = []
    last = 0
    for line in doc.events:
        try:
            record = decode_content(line.encode())
        except RecordError as exc:
            seq = _seq_of(line)
            raise ImportRejected(
                f"event {seq if seq is not None else '?'} is not intact: {exc.kind}", seq
            ) from None
        if record.seq <= last:
            raise ImportRejected(f"events out of order at seq {record.seq}", record.seq)
        problem = _refused_directly(record.event)
        if problem is not None:
            # Anyone can make a self-consistent document: what a direct write refuses, an
            # import refuses too.
            raise ImportRejected(f"event {record.seq}: {problem}", record.seq)
        last = record.seq
        records.append(record)
    if not records or not isinstance(records[0].event, ev.ConversationCreated):
        raise ImportRejected("the first event must create the conversation")
    if records[0].event.conversation_id != h.conversation.id:
        raise ImportRejected("the events create another conversation than the header names")
    members = _Membership(h.conversation.id)
    for r in records:
        if not members.concerns(r.event):
            raise ImportRejected(f"event {r.seq} does not belong to the conversation", r.seq)
    conn = open_scratch(":memory:")
    try:
        conn.execute("BEGIN")
        for r in records:
            try:
                apply(conn, r)
            except Exception as exc:  # a forged event the state cannot hold (or a bug)
                raise ImportRejected(
                    f"event {r.seq} does not replay: {type(exc).__name__}: {exc}", r.seq
                ) from None
        conn.execute("COMMIT")
        _compare(conn, doc)
    finally:
        conn.close()
    return records


def _refused_directly(event: ev.Event) -> str | None:
    """Why a direct write would refuse what `event` holds (None: it would not)."""
    try:
        if isinstance(event, ev.BlockAppended):
            block = event.block
            msgspec.convert(msgspec.to_builtins(block), cmd.AppendBlock)
            if normalize_ts(block.timestamp) != block.timestamp:
                return f"block timestamp {block.timestamp!r} is not in the log's format"
        elif isinstance(event, ev.ConversationCreated | ev.ConversationUpdated):
            cmd.check_nesting("metadata", event.metadata)
    except (msgspec.ValidationError, ValueError) as exc:
        return str(exc)
    return None


def _within(contexts: list[Context]) -> list[Context]:
    """The contexts with only the cross-references inside the conversation: one from another
    conversation is in the header (the tree as it is) but not in the events (that event
    belongs to the other conversation), and an import drops those anyway."""
    ids = {c.id for c in contexts}
    return [
        msgspec.structs.replace(
            c, crossrefs=[x for x in c.crossrefs if x.from_id in ids and x.to_id in ids]
        )
        for c in contexts
    ]


def _seq_of(line: str) -> int | None:
    try:
        value = msgspec.json.decode(line.encode(), type=dict[str, Any]).get("seq")
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, int) else None


def _compare(conn: sqlite3.Connection, doc: ExportDocument) -> None:
    h = doc.header
    replayed = q.get_conversation(conn, h.conversation.id)
    if replayed != h.conversation:
        raise ImportRejected("the conversation in the header does not match its events")
    if _within(q.get_tree(conn, h.conversation.id)) != _within(h.contexts):
        raise ImportRejected("the tree in the header does not match its events")
    claimed = {b.id: b for b in doc.blocks}
    if len(claimed) != len(doc.blocks):
        raise ImportRejected("a block appears twice in the document")
    count = 0
    for ctx in h.contexts:
        after: int | None = None
        while True:
            page, after = q.list_blocks(conn, ctx.id, limit=1000, after=after)
            for block in page:
                count += 1
                if claimed.get(block.id) != block:
                    raise ImportRejected(
                        f"block {block.id!r} in the document does not match its events",
                        block.seq,
                    )
            if after is None:
                break
    if count != len(claimed):
        raise ImportRejected("the document holds blocks that no event wrote")


_ID_FIELDS = {
    "conversation_id",
    "root_context_id",
    "context_id",
    "parent_id",
    "old_parent_id",
    "new_parent_id",
    "block_id",
    "ref_id",
    "from_id",
    "to_id",
    "id",
}


class IdMap:
    """Source id → id in this daemon: new ids (keeping the kind's prefix) or the same ids."""

    def __init__(self, mode: ImportMode) -> None:
        self.mode = mode
        self.ids: dict[str, str] = {}

    def __call__(self, source: str) -> str:
        if self.mode == "keep":
            return source
        found = self.ids.get(source)
        if found is None:
            prefix = source.split("_", 1)[0] if "_" in source else "blk"
            if prefix not in ("conv", "ctx", "blk", "xref"):
                prefix = "blk"
            found = self.ids[source] = new_id(prefix)
        return found


def _remap(value: Any, ids: IdMap) -> Any:
    if isinstance(value, dict):
        return {
            k: (ids(v) if k in _ID_FIELDS and isinstance(v, str) else _remap(v, ids))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_remap(v, ids) for v in value]
    return value


def imported_events(records: list[Record], doc: ExportDocument, mode: ImportMode) -> list[ev.Event]:
    """The events that re-create the document's history here (ids mapped, sources named).

    Focus changes are not imported (the importer's user did not move); cross-references to
    contexts outside the conversation are dropped (their targets do not exist here).
    """
    ids = IdMap(mode)
    source = ev.ImportSource(
        conversation_id=doc.header.conversation.id,
        exported_at=doc.header.exported_at,
        head_hash=doc.header.source_head_hash,
        mode=mode,
    )
    members = {c.id for c in doc.header.contexts}
    dropped_refs: set[str] = set()
    out: list[ev.Event] = []
    for r in records:
        e = r.event
        if isinstance(e, ev.ContextFocused):
            continue
        if isinstance(e, ev.CrossRefAdded) and e.to_id not in members:
            dropped_refs.add(e.ref_id)
            continue
        if isinstance(e, ev.CrossRefRevoked) and e.ref_id in dropped_refs:
            continue
        data = _remap(msgspec.to_builtins(e), ids)
        data["original_hash"] = r.hash
        if isinstance(e, ev.ConversationCreated):
            data["imported_from"] = msgspec.to_builtins(source)
        out.append(msgspec.convert(data, type(e)))
    return out
