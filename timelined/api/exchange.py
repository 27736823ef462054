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


class ExportEnd(msgspec.Struct, frozen=True, kw_only=True):
    events: int
    blocks: int


class ExportPart(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One streamed piece of an export; exactly one of the members is set."""

    header: ExportHeader | None = None
    events: list[str] | None = None  # log lines, without their newline
    blocks: list[Block] | None = None
    end: ExportEnd | None = None


class ExportDocument(msgspec.Struct, frozen=True, kw_only=True):
    """A whole export, as ImportConversation takes it (the parts joined)."""

    header: ExportHeader
    events: list[str]
    blocks: list[Block]


def join_parts(parts: Iterable[ExportPart]) -> ExportDocument:
    """The document the parts make (in any order but one header), as ImportConversation takes."""
    header: ExportHeader | None = None
    events: list[str] = []
    blocks: list[Block] = []
    for part in parts:
        if part.header is not None:
            header = part.header
        events.extend(part.events or [])
        blocks.extend(part.blocks or [])
    if header is None:
        raise ImportRejected("the document has no header part")
    return ExportDocument(header=header, events=events, blocks=blocks)
