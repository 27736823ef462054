"""Hypothesis against a running daemon: random frames, bursts and hang-ups; then its health.

Short runs here (`make test`); tests/stress/test_fuzz_stress.py runs the same campaigns with
examples scaled by ROUNDS. Every reply is checked by the oracle of tests/fuzz/wire.py; the
daemon must stay up, answer within the timeout, keep its memory and sockets, log no error,
and the canary must be answered correctly all along.
"""

from __future__ import annotations

import os

from tests.fuzz.campaign import FuzzTarget, check_health, run_frames, run_hangups
from tests.fuzz.exchange_fuzz import run_exchange

# TIMELINED_FUZZ_EXAMPLES=N makes these runs longer (the stress run scales them by ROUNDS).
EXAMPLES = int(os.environ.get("TIMELINED_FUZZ_EXAMPLES", "250"))


def test_random_frames_get_well_formed_named_answers(target: FuzzTarget) -> None:
    run_frames(target, EXAMPLES)
    check_health(target)
    assert target.stats.trials >= EXAMPLES


def test_hangups_mid_frame_and_mid_reply_cost_nothing(target: FuzzTarget) -> None:
    run_hangups(target, max(20, EXAMPLES // 2))
    check_health(target)


def test_broken_and_forged_exports_are_refused_by_name(target: FuzzTarget) -> None:
    run_exchange(target, max(10, EXAMPLES // 5))
    check_health(target)
