"""Small statistics helpers: percentiles by nearest rank, medians of repeats."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(samples: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank; NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/max of latencies given in seconds, in milliseconds."""
    ordered = sorted(samples_s)
    return {
        "p50_ms": percentile(ordered, 50) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "max_ms": (ordered[-1] * 1000) if ordered else math.nan,
        "n": float(len(ordered)),
    }


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def median_run(runs: Sequence[dict[str, float]], key: str) -> dict[str, float]:
    """The run whose `key` is the median of the runs (so its other fields stay consistent)."""
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2]
