"""Identifiers and timestamps: sortable ids, and the log's one timestamp format."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    """A ULID-shaped id (48-bit milliseconds + 80 random bits, Crockford base32) with a prefix.

    Ids sort by creation time, which keeps B-tree inserts local and listings readable.
    """
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


def utc_now() -> str:
    """Now as the log writes it: UTC, microseconds, `Z` (2026-11-22T03:38:00.123456Z)."""
    return format_ts(datetime.now(UTC))


def format_ts(moment: datetime) -> str:
    utc = moment.astimezone(UTC)
    # %Y does not pad years before 1000 ("1-01-01…"), so the year is formatted by hand.
    return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S.%f}Z"


def parse_ts(text: str) -> datetime:
    """Parse an ISO 8601 timestamp (with Z or an offset); naive times are taken as UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def normalize_ts(text: str) -> str:
    """A client's timestamp in the log's format; raises ValueError when it is not ISO 8601
    or not representable in UTC (an offset that moves year 1 or 9999 out of range)."""
    try:
        return format_ts(parse_ts(text))
    except OverflowError:
        raise ValueError(f"{text!r} is out of range in UTC") from None
