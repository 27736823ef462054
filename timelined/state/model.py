"""The state's own bookkeeping; what it answers is `timelined.api.model`."""

from __future__ import annotations

import msgspec


class Meta(msgspec.Struct, frozen=True):
    last_seq: int
    last_hash: str
    event_schema: int
