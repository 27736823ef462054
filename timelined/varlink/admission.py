"""Connection slots: who may take one, counted by uid and by class, decided at accept.

The server asks the application's admission hook (`Admitter`, see `server.py`) once per accepted
connection, with the peer's credentials, before the connection takes a slot. The hook either
raises (the peer is refused: it gets the error and is closed at once, holding nothing) or answers
an `Admission`: the class (`tier`) the connection is counted in, and whether it is `privileged`,
i.e. may take the slots kept free by `reserved_connections`. `Slots` then applies, in order:

- `max_connections`: nobody beyond it;
- `reserved_connections`: an unprivileged peer only while fewer than `max_connections -
  reserved_connections` connections are open (as PostgreSQL reserves slots for superusers), so
  that privileged peers always find a free slot, however many unprivileged ones connect;
- `max_connections_per_uid`: no uid beyond its share (0: no per-uid bound), so that one uid
  cannot take every slot either.

Sans-I/O: the server registers and releases; this counts and decides.
"""

from __future__ import annotations

from collections import Counter
from typing import TypeVar

import msgspec

from timelined.varlink.errors import LimitReached

__all__ = ["ADMISSION_REFUSED", "Admission", "Refusal", "Slots"]

K = TypeVar("K", int, str)

ADMISSION_REFUSED = "admission"
"""The refusal reason counted when the admission hook refused the peer."""


class Admission(msgspec.Struct, frozen=True):
    """The admission hook's answer for an accepted connection."""

    tier: str  # the class it is counted in (stats: connections by class)
    privileged: bool = False  # may take the reserved slots


EVERYONE = Admission("all", privileged=True)
"""Without a hook: every peer alike, and nobody kept out of the reserved slots."""


class Refusal(msgspec.Struct, frozen=True):
    """Why a connection got no slot: `reason` for the stats, `error` for the peer."""

    reason: str
    error: LimitReached


class Slots:
    """The open connections, counted by uid and by tier, and the refusals by reason."""

    __slots__ = ("by_tier", "by_uid", "open", "refused")

    def __init__(self) -> None:
        self.open = 0
        self.by_uid: Counter[int] = Counter()
        self.by_tier: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def take(
        self,
        uid: int,
        admission: Admission,
        *,
        max_connections: int,
        reserved: int,
        per_uid: int,
    ) -> Refusal | None:
        """Count the connection in, or say why not (and count that)."""
        refusal = _refusal(
            self.open,
            self.by_uid[uid],
            admission,
            max_connections=max_connections,
            reserved=reserved,
            per_uid=per_uid,
        )
        if refusal is not None:
            self.refused[refusal.reason] += 1
            return refusal
        self.open += 1
        self.by_uid[uid] += 1
        self.by_tier[admission.tier] += 1
        return None

    def release(self, uid: int, tier: str) -> None:
        self.open -= 1
        _decrement(self.by_uid, uid)
        _decrement(self.by_tier, tier)

    def refuse(self, reason: str) -> None:
        """Count a refusal decided elsewhere (the admission hook's)."""
        self.refused[reason] += 1


def _refusal(
    open_now: int,
    of_uid: int,
    admission: Admission,
    *,
    max_connections: int,
    reserved: int,
    per_uid: int,
) -> Refusal | None:
    if open_now >= max_connections:
        return Refusal(
            "max_connections", LimitReached("max_connections", open_now + 1, max_connections)
        )
    unprivileged = max(max_connections - reserved, 0)
    if not admission.privileged and open_now >= unprivileged:
        # The peer sees the bound that applies to it.
        return Refusal("reserved", LimitReached("max_connections", open_now + 1, unprivileged))
    if per_uid > 0 and of_uid >= per_uid:
        return Refusal(
            "max_connections_per_uid",
            LimitReached("max_connections_per_uid", of_uid + 1, per_uid),
        )
    return None


def _decrement(counter: Counter[K], key: K) -> None:
    # Keys at zero are dropped so that a churn of uids leaves nothing behind.
    left = counter[key] - 1
    if left > 0:
        counter[key] = left
    else:
        del counter[key]
