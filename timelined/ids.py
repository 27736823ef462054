"""Identifiers and timestamps: sortable ids, and the log's one timestamp format."""

from __future__ import annotations

import os
import time
from collections import deque
from datetime import UTC, datetime

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


# byte -> its low 5 bits as a Crockford digit: 256 is a multiple of 32, so a uniform random byte
# gives a uniform digit (5 random bits).
_DIGIT_OF_BYTE = bytes(_CROCKFORD[b & 31].encode()[0] for b in range(256))
_time_part: tuple[int, str] = (-1, "")  # (milliseconds, their 10 digits): one tuple, swapped whole
# The random parts of the next ids, 16 digits each, drawn POOL_IDS at a time: one os.urandom
# per id releases the GIL per append on the writer's thread, and at 64 connections each release
# handed the GIL to the busy event loop and back (docs/performance.md). A deque because its
# popleft is atomic: two threads never take the same part. Emptied in a forked child, which
# must not repeat its parent's ids.
POOL_IDS = 256
_random_parts: deque[str] = deque()
os.register_at_fork(after_in_child=_random_parts.clear)


def _time_digits(ms: int) -> str:
    chars = []
    for _ in range(10):
        chars.append(_CROCKFORD[ms & 31])
        ms >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """A ULID-shaped id (48-bit milliseconds + 80 random bits, Crockford base32) with a prefix.

    Ids sort by creation time, which keeps B-tree inserts local and listings readable. The 26
    digits are 10 for the milliseconds (2 zero bits + 48) and 16 for the random part, 5 bits
    each; the first 10 are computed once per millisecond and the last 16 are 16 random bytes
    mapped to digits by one `bytes.translate` (no per-digit Python loop: this runs per append),
    POOL_IDS ids' worth at a time.
    """
    global _time_part
    ms = int(time.time() * 1000)
    cached = _time_part
    if cached[0] != ms:
        cached = _time_part = (ms, _time_digits(ms))
    try:
        random_part = _random_parts.popleft()
    except IndexError:
        random_part = _draw_random_parts()
    return f"{prefix}_{cached[1]}{random_part}"


def _draw_random_parts() -> str:
    """One random part, and POOL_IDS - 1 more queued for the next ids."""
    digits = os.urandom(16 * POOL_IDS).translate(_DIGIT_OF_BYTE).decode()
    _random_parts.extend(digits[i : i + 16] for i in range(16, len(digits), 16))
    return digits[:16]


_second_part: tuple[int, str] = (-1, "")  # (a second since the epoch, its "YYYY-MM-DDTHH:MM:SS")


def utc_now() -> str:
    """Now as the log writes it: UTC, microseconds, `Z` (2026-11-22T03:38:00.123456Z).

    The writer stamps every batch: the date and time of day are formatted once per second
    (`format_ts` and a `datetime` per call were ~6 µs), the microseconds per call. The clock
    and its rounding (down) are `datetime.now`'s."""
    global _second_part
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    cached = _second_part
    if cached[0] != seconds:
        cached = _second_part = (seconds, format_ts(datetime.fromtimestamp(seconds, UTC))[:19])
    return f"{cached[1]}.{micros:06d}Z"


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
