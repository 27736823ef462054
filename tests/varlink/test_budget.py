"""The daemon-wide byte budget and each uid's share of it (budget.py)."""

from __future__ import annotations

from timelined.varlink.budget import ByteBudget
from timelined.varlink.framing import FrameReader, FrameTooLarge

KiB = 1024


def test_a_uid_holds_at_most_its_share_and_others_still_fit() -> None:
    budget = ByteBudget(1000 * KiB, share=300 * KiB)
    assert budget.try_take(200 * KiB, uid=7)
    assert not budget.try_take(200 * KiB, uid=7)  # 400 KiB > its 300 KiB share
    assert budget.refusal(200 * KiB, uid=7) == (
        "max_buffered_bytes_per_uid (uid 7: in use + this buffer)",
        400 * KiB,
        300 * KiB,
    )
    assert budget.try_take(300 * KiB, uid=8)  # another uid: its own share, the same budget
    budget.give(200 * KiB, uid=7)
    assert budget.held_by(7) == 0 and budget.try_take(300 * KiB, uid=7)


def test_the_budget_refusal_says_in_use_plus_the_request_over_the_limit() -> None:
    budget = ByteBudget(1000 * KiB)
    budget.count(900 * KiB)
    assert budget.refusal(300 * KiB) == (
        "max_buffered_bytes (in use + this buffer)",
        1200 * KiB,
        1000 * KiB,
    )


def test_a_partial_frame_refused_by_the_budget_names_what_was_over_what() -> None:
    """The error read "max_buffered_bytes exceeded: 438528 > 33554432": the frame's size
    against the whole budget, false on its face. It says in use + the frame > the budget."""
    budget = ByteBudget(1024 * KiB)
    budget.count(900 * KiB)  # other connections' buffers
    reader = FrameReader(None, 4096 * KiB, budget=budget, owner=5)  # type: ignore[arg-type]
    reader.feed(b"x" * (300 * KiB))  # no NUL: a partial frame of 300 KiB
    frames = reader.take_frames()
    assert frames == [] and reader.failed
    err = reader._error
    assert isinstance(err, FrameTooLarge)
    assert (err.limit, err.size, err.maximum) == (
        "max_buffered_bytes (in use + this buffer)",
        1200 * KiB,
        1024 * KiB,
    )
    assert budget.used == 900 * KiB  # nothing of the refused frame is kept
