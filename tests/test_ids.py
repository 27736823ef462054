"""Ids and timestamps: the shapes the log and the state rely on, from the writer's fast paths.

`new_id` draws its random digits POOL_IDS ids at a time and `utc_now` formats the date and time
of day once per second (ids.py): neither may change what they return.
"""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import UTC, datetime

import pytest

from timelined import ids
from timelined.ids import POOL_IDS, format_ts, new_id, utc_now

_ID = re.compile(r"blk_[0-9a-hjkmnp-tv-z]{26}")


def test_ids_are_well_formed_and_distinct_across_many_pools() -> None:
    made = [new_id("blk") for _ in range(5 * POOL_IDS + 7)]
    assert all(_ID.fullmatch(i) for i in made)
    assert len(set(made)) == len(made)
    # The random part is 16 digits of 5 random bits each: over 1,287 ids every digit value
    # turns up in every position (a pool sliced wrongly would repeat or shift them).
    for position in range(14, 30):
        assert len({i[position] for i in made}) == 32


def test_threads_drawing_ids_at_once_never_share_one() -> None:
    made: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(len(made))

    def draw(out: list[str]) -> None:
        start.wait()
        out.extend(new_id("blk") for _ in range(3 * POOL_IDS))

    threads = [threading.Thread(target=draw, args=(out,)) for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in made for i in out]
    assert len(set(every)) == len(every) == 8 * 3 * POOL_IDS


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_its_parents_queued_ids() -> None:
    new_id("blk")  # the pool holds POOL_IDS - 1 queued random parts now (or some)
    if not ids._random_parts:
        new_id("blk")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        try:
            os.write(write, " ".join(new_id("blk") for _ in range(4)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode().split()
    os.waitpid(pid, 0)
    parent = [new_id("blk") for _ in range(4)]
    assert len(child) == 4
    assert {i[14:] for i in child}.isdisjoint(i[14:] for i in parent)


@pytest.mark.parametrize(
    "ns",
    [
        1_796_612_400_000_000_000,  # a whole second
        1_796_612_400_999_999_999,  # its last nanosecond: rounded down, as datetime.now does
        1_796_612_401_000_000_500,  # the next second
        1_796_612_459_123_456_789,
        946_684_799_999_999_000,  # 1999-12-31T23:59:59.999999Z
        946_684_800_000_001_000,  # 2000-01-01T00:00:00.000001Z
    ],
)
def test_utc_now_is_the_logs_format_of_the_clock(monkeypatch: pytest.MonkeyPatch, ns: int) -> None:
    monkeypatch.setattr(ids.time, "time_ns", lambda: ns)
    seconds, micros = divmod(ns // 1000, 1_000_000)
    expected = format_ts(datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros))
    assert utc_now() == expected
    assert utc_now() == expected  # the second's cached text gives the same answer


def test_utc_now_follows_the_real_clock() -> None:
    for _ in range(3):
        before = format_ts(datetime.now(UTC))
        now = utc_now()
        after = format_ts(datetime.now(UTC))
        assert before <= now <= after
        time.sleep(0.01)
