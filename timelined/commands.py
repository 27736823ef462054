"""The write commands: what a client asks the engine to change.

Each class is also the parameter type of the Varlink method of the same name, so the types that
validate a call on the socket are the ones the engine checks: one definition, never two.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from timelined.events import Event, SubBlock

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Text = Annotated[str, msgspec.Meta(max_length=65536)]
Role = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Count = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
# Stored in SQLite INTEGER columns: a larger number would overflow them inside the writer.
Tokens = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


# Metadata deeper than this is refused: the daemon could decode a little under Python's
# recursion limit, but a client reading the block back from deeper in its own stack could not.
MAX_NESTING = 64


def check_nesting(name: str, value: Any) -> None:
    """Raise ValueError (InvalidParameter `name`) when `value` nests past MAX_NESTING."""
    if not value:
        return
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            # The suffix is msgspec's own way of naming the parameter (InvalidParameter).
            raise ValueError(f"nested deeper than {MAX_NESTING} levels - at `$.{name}`")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


class _Command(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class CreateConversation(_Command, frozen=True):
    name: Name
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_nesting("metadata", self.metadata)


class UpdateConversation(_Command, frozen=True):
    id: Id
    name: Name | None = None
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_nesting("metadata", self.metadata)


class ArchiveConversation(_Command, frozen=True):
    id: Id
    reason: Text | None = None


class SpawnSidebar(_Command, frozen=True):
    parent_id: Id
    reason: Text
    inherit_last: Count | None = None


class PauseContext(_Command, frozen=True):
    id: Id


class ResumeContext(_Command, frozen=True):
    id: Id


class MergeContext(_Command, frozen=True):
    id: Id
    summary: str | None = None


class ArchiveContext(_Command, frozen=True):
    id: Id
    reason: Text | None = None


class RestoreContext(_Command, frozen=True):
    id: Id


class ReparentContext(_Command, frozen=True):
    id: Id
    new_parent_id: Id


class Focus(_Command, frozen=True):
    context_id: Id


class NewBlock(_Command, frozen=True):
    """A block to append: AppendBlock's parameters but its context (AppendBlocks' items)."""

    role: Role
    content: str
    id: Id | None = None
    timestamp: str | None = None
    time_taken: Annotated[float, msgspec.Meta(ge=0)] | None = None
    tokens_input: Tokens | None = None
    tokens_output: Tokens | None = None
    metadata: dict[str, Any] | None = None
    sub_blocks: list[SubBlock] | None = None

    def __post_init__(self) -> None:
        # Run by the decoder for every block of a call (AppendBlocks: up to 1,000): most
        # blocks have neither, and skip both calls.
        if self.metadata:
            check_nesting("metadata", self.metadata)
        if self.sub_blocks:
            for i, sub in enumerate(self.sub_blocks):
                check_nesting(f"sub_blocks[{i}].metadata", sub.metadata)


class AppendBlock(NewBlock, frozen=True, kw_only=True):
    context_id: Id


# A model turn is a handful of blocks; a call is bounded in count as well as in bytes (the
# whole call by limits.max_message_bytes, each block by limits.max_block_bytes).
MAX_BLOCKS_PER_CALL = 1000


class AppendBlocks(_Command, frozen=True):
    context_id: Id
    blocks: Annotated[list[NewBlock], msgspec.Meta(min_length=1, max_length=MAX_BLOCKS_PER_CALL)]


class RetractBlock(_Command, frozen=True):
    id: Id
    reason: Text | None = None


class SetTags(_Command, frozen=True):
    context_id: Id
    tags: list[Annotated[str, msgspec.Meta(min_length=1, max_length=128)]]


class AddCrossRef(_Command, frozen=True):
    from_id: Id
    to_id: Id
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    note: Text | None = None


class RevokeCrossRef(_Command, frozen=True):
    id: Id


class ImportEvents(_Command, frozen=True):
    """Internal (not a Varlink method): re-create a verified export's history here.

    The daemon's ImportConversation method verifies the document off the writer's thread
    (timelined.exchange) and submits the resulting events with this command.
    """

    events: list[Event]
    mode: str = "new"


Command = (
    CreateConversation
    | UpdateConversation
    | ArchiveConversation
    | SpawnSidebar
    | PauseContext
    | ResumeContext
    | MergeContext
    | ArchiveContext
    | RestoreContext
    | ReparentContext
    | Focus
    | AppendBlock
    | AppendBlocks
    | RetractBlock
    | SetTags
    | AddCrossRef
    | RevokeCrossRef
    | ImportEvents
)
