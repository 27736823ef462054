"""What every part gets: the results, the mode, scratch directories on the state's filesystem."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.report import Results

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Env:
    quick: bool
    results: Results
    root: Path = RESULTS_DIR  # where results, the dataset cache and the scratch dirs live
    verify_events: int | None = None  # --verify-events: the verify part's size instead of `big`
    _n: int = 0
    _limit_source: Callable[[Env], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.work = self.root / "work" / f"{os.getpid()}"
        self.cache = self.root / "cache"
        self.work.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)

    # --- sizes and durations -------------------------------------------------------------------

    @property
    def window_s(self) -> float:
        """How long one throughput measurement runs."""
        return 0.4 if self.quick else 3.0

    @property
    def repeats(self) -> int:
        """How many times a short measurement is repeated (the median is reported)."""
        return 1 if self.quick else 3

    @property
    def boot_sizes(self) -> list[int]:
        return [1_000, 2_000] if self.quick else [10_000, 100_000, 1_000_000]

    @property
    def big(self) -> int:
        """The "1M events" size of the query, memory and verify parts."""
        return 2_000 if self.quick else 1_000_000

    @property
    def small(self) -> int:
        """The "10k events" size of the memory part."""
        return 1_000 if self.quick else 10_000

    @property
    def tail(self) -> int:
        """The un-applied tail of the unclean boots (10k events)."""
        return 500 if self.quick else 10_000

    def label(self, n: int) -> str:
        if n >= 1_000_000 and n % 1_000_000 == 0:
            return f"{n // 1_000_000}M"
        if n >= 1_000 and n % 1_000 == 0:
            return f"{n // 1_000}k"
        return str(n)

    # --- scratch -------------------------------------------------------------------------------

    def scratch(self, name: str) -> Path:
        """A fresh, empty directory for one measurement (short: socket paths are ≤ 107 bytes)."""
        self._n += 1
        path = self.work / f"{self._n}{name[:8]}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    # --- raw limits, measured once per run ------------------------------------------------------

    def limit(self, key: str) -> float:
        """A raw limit of this run (measuring the raw part first if it has not run yet)."""
        if key not in self.results.limits and self._limit_source is not None:
            source, self._limit_source = self._limit_source, None
            print("(measuring the raw limits first: the ratios need them)", flush=True)
            source(self)
        return self.results.limits.get(key, float("nan"))


def short_socket_path(directory: Path, name: str = "s") -> Path:
    """A socket path in `directory`, checked against the 108-byte sun_path limit."""
    path = directory / name
    if len(os.fsencode(path)) >= 100:
        raise RuntimeError(f"{path} is too long for a Unix socket; use a shorter --dir")
    return path
