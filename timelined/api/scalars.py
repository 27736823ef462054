"""The bounded scalar types of the parameters, and the base of every parameter Struct."""

from __future__ import annotations

from typing import Annotated

import msgspec

from timelined import commands as cmd

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

Id = cmd.Id
Role = cmd.Role
Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT, description="1..1000; default 100")]
SearchLimit = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT, description="1..1000; default 20")]
HistoryLimit = Annotated[
    int, msgspec.Meta(ge=1, le=1_000_000, description="only the last N blocks; default all")
]
Cursor = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # bound to SQLite INTEGER
Timestamp = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, description="ISO 8601; naive times are UTC")
]
Query = Annotated[str, msgspec.Meta(max_length=4096, description="an FTS5 query")]


class Params(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The parameters of a reading method: an unknown one is refused, not ignored."""


class EmptyParams(Params, frozen=True):
    pass
