"""Messages from the verifier's child processes (worker.py) to the run driver (runner.py).

One JSON object per line on the child's stdout: progress, then one final message.
"""

from __future__ import annotations

import msgspec

from timelined.api.verify import ChainResult, TreeResult, VerifyProgress, VerifyReport
from timelined.verifier.model import StateResult


class Snapshot(msgspec.Struct, frozen=True, tag="snapshot"):
    seq: int
    hash: str


class Progress(msgspec.Struct, frozen=True, tag="progress"):
    progress: VerifyProgress


class StateDone(msgspec.Struct, frozen=True, tag="state"):
    result: StateResult


class ChainDone(msgspec.Struct, frozen=True, tag="chain"):
    result: ChainResult
    tree: TreeResult | None = None  # the tree's check, after the walk (when asked for)


class RebuildDone(msgspec.Struct, frozen=True, tag="rebuild"):
    applied: int
    last_seq: int
    last_hash: str
    seconds: float


class PgDone(msgspec.Struct, frozen=True, tag="pg"):
    """A whole run on PostgreSQL (pgrun.verify_pg), state and chain, in one child."""

    report: VerifyReport


class Failed(msgspec.Struct, frozen=True, tag="failed"):
    error: str
    log_seq: int | None = None  # set when the failure is the log's (LogDamaged)


Message = Snapshot | Progress | StateDone | ChainDone | RebuildDone | PgDone | Failed
decode_message = msgspec.json.Decoder(Message).decode
encode_message = msgspec.json.Encoder().encode
