"""The fuzzer of tests/fuzz for longer: `make stress ROUNDS=N`.

The same campaigns as tests/fuzz/test_fuzz_frames.py against one real daemon, with examples
scaled by N (FRAMES_PER_ROUND random payloads, HANGUPS_PER_ROUND hang-ups and IMPORTS_PER_ROUND
broken or forged exports a round), in chunks so that memory can be watched as the run goes; a
seeded random run (the seed is printed; TIMELINED_FUZZ_SEED replays one). One summary line:

    fuzz: trials=N frames=N crashes=0 hangs=0 canary_failures=0
"""

from __future__ import annotations

import time

import pytest

from tests.fuzz.campaign import (
    RSS_MARGIN_KIB,
    check_health,
    fuzz_target,
    run_frames,
    run_hangups,
    stress_seed,
)
from tests.fuzz.exchange_fuzz import run_exchange
from tests.stress.rounds import stress_rounds, summary

FRAMES_PER_ROUND = 20
HANGUPS_PER_ROUND = 5
IMPORTS_PER_ROUND = 2
CHUNKS = 10
# The daemon's memory rises with the data the fuzzer writes (SQLite's caches; Verify, Repair and
# ImportConversation replay it all): measured ~0.2 MiB a round (46 -> 92 MiB at 200 rounds).
GROWTH_PER_ROUND_KIB = 256


@pytest.mark.stress
def test_fuzz_for_rounds() -> None:
    rounds = stress_rounds()
    seed = stress_seed()
    started = time.monotonic()
    rss: list[int] = []
    with fuzz_target() as target:
        try:
            for chunk in range(CHUNKS):
                # At least one example a chunk: Hypothesis refuses max_examples=0 (ROUNDS=1).
                frames = max(1, (FRAMES_PER_ROUND * rounds) // CHUNKS + (chunk == 0))
                hangups = max(1, (HANGUPS_PER_ROUND * rounds) // CHUNKS + (chunk == 0))
                run_frames(target, frames, seed + chunk)
                run_hangups(target, hangups, seed + chunk)
                run_exchange(target, (IMPORTS_PER_ROUND * rounds) // CHUNKS + 1, seed + chunk)
                rss.append(target.rss_kib())
            facts = check_health(target, RSS_MARGIN_KIB + GROWTH_PER_ROUND_KIB * rounds)
        finally:
            summary(target.summary())
            print(
                f"fuzz detail: rounds={rounds} seed={seed} bytes={target.stats.bytes} "
                f"rss_kib={rss} violations={dict(target.stats.violations)} "
                f"seconds={time.monotonic() - started:.0f}"
            )
    # No creeping growth beyond what the data explains: the second half adds little.
    assert (
        rss[-1] - rss[len(rss) // 2] <= RSS_MARGIN_KIB // 2 + GROWTH_PER_ROUND_KIB * rounds // 2
    ), rss
    assert facts["canary_calls"] > 0
