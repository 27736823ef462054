"""The export document: the parts ExportConversation streams, joined by ImportConversation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from timelined.api.model import Block, Context, Conversation
from timelined.errors import ImportRejected

ImportMode = Literal["new", "keep"]


class ExportHeader(msgspec.Struct, frozen=True, kw_only=True):
    format: str
    exported_at: str
    source_version: str
    source_last_seq: int
    source_head_hash: str
    conversation: Conversation
    contexts: list[Context]


class ExportEnd(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    events: int
    blocks: int
    # A signed checkpoint (C2SP signed note) whose tree holds every event of the export, taken
    # once they were all read; None from a daemon without the tree (and in older documents).
    checkpoint: str | None = None


class EventProof(msgspec.Struct, frozen=True):
    """Event `seq`'s inclusion proof (base64 hashes) in the tree of the end part's checkpoint."""

    seq: int
    hashes: list[str]


class ExportPart(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One streamed piece of an export; exactly one of the members is set. `contexts`: the rest
    of the tree, in creation order, when it did not fit the header's part (one reply); they
    follow the header, before the events, and belong to `header.contexts` (`with_contexts`)."""

    header: ExportHeader | None = None
    contexts: list[Context] | None = None
    events: list[str] | None = None  # log lines, without their newline
    blocks: list[Block] | None = None
    proofs: list[EventProof] | None = None  # after the blocks, before the end part
    end: ExportEnd | None = None


class ExportDocument(msgspec.Struct, frozen=True, kw_only=True):
    """A whole export, as ImportConversation takes it (the parts joined)."""

    header: ExportHeader
    events: list[str]
    blocks: list[Block]


def join_parts(parts: Iterable[ExportPart]) -> ExportDocument:
    """The document the parts make (in any order but one header), as ImportConversation takes."""
    header: ExportHeader | None = None
    contexts: list[Context] = []
    events: list[str] = []
    blocks: list[Block] = []
    for part in parts:
        if part.header is not None:
            header = part.header
        contexts.extend(part.contexts or [])
        events.extend(part.events or [])
        blocks.extend(part.blocks or [])
    if header is None:
        raise ImportRejected("the document has no header part")
    return ExportDocument(header=with_contexts(header, contexts), events=events, blocks=blocks)


def with_contexts(header: ExportHeader, contexts: list[Context]) -> ExportHeader:
    """The header with the tree's contexts that came in parts of their own after it."""
    if not contexts:
        return header
    return msgspec.structs.replace(header, contexts=[*header.contexts, *contexts])
