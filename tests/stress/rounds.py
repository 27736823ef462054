"""The round count of `make stress ROUNDS=N`, and the summary line every stress part prints."""

from __future__ import annotations

import os

ROUNDS_ENV = "TIMELINED_STRESS_ROUNDS"


def stress_rounds(default: int = 50) -> int:
    """TIMELINED_STRESS_ROUNDS, which `make stress ROUNDS=N` sets."""
    try:
        return max(1, int(os.environ.get(ROUNDS_ENV, default)))
    except ValueError:
        return default


SUMMARY: list[str] = []


def summary(line: str) -> None:
    """Keep a part's one summary line; conftest prints it in pytest's terminal summary (pytest
    captures a test's output, and `make stress` runs it with -q and without -s)."""
    SUMMARY.append(line)
    print(line, flush=True)  # in the captured output too, shown with the test if it fails
