"""The verifier's own results; what it reports on the wire is `timelined.api.verify`."""

from __future__ import annotations

import msgspec

from timelined.api.verify import Difference

MAX_DIFFERENCES = 1000  # stored in a report; all of them are counted
MAX_TEXT = 160  # characters of a differing value kept in a report


class StateResult(msgspec.Struct, frozen=True, kw_only=True):
    """The state check at one snapshot of the state database (its meta.last_seq = snapshot_seq)."""

    snapshot_seq: int
    snapshot_hash: str
    replayed_seq: int  # where the replay stopped: snapshot_seq unless the log ends before it
    events_replayed: int
    differences: list[Difference]
    differences_total: int
    search_index: str  # what was checked of the FTS index, and the outcome
    replay_seconds: float
    compare_seconds: float
    log_error: str | None = None  # the replay met a log problem; the chain check names it
    log_error_seq: int | None = None
    log_head_seq: int | None = None  # PostgreSQL: the log table's head in the state's snapshot
