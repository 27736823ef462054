"""Read latency at 1M events through the socket: ListBlocks, GetHistory, SearchBlocks.

The daemon serves the cached 1M-event history (verifier off, no writes); one client connection
in this process calls each method in turn, sequentially, and the latency is from sending the
call to having decoded the whole reply. Parameters are drawn at random from the history:

- ListBlocks: a page of 100 of a conversation's root context (~1,000 blocks), from a random
  position (keyset paging: `after`).
- GetHistory: a sidebar's whole history (its 20 inherited blocks and its own, 3-25), and a root
  context's last 100 (`limit=100`).
- SearchBlocks (limit 20, best first by bm25): a word drawn uniformly from the 4,000-word
  vocabulary (most words are moderately rare: a few thousand matching blocks), two such words,
  and, for the worst case, one of the 10 most common words (hundreds of thousands of matches).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from benchmarks.daemon import Daemon, write_config
from benchmarks.dataset import Dataset, TextGen, dataset
from benchmarks.env import Env
from benchmarks.report import Target
from benchmarks.stats import summary_ms
from benchmarks.wire import TIMELINE, WireClient
from timelined.config import Config

PART = "query"

Call = tuple[str, dict[str, Any]]  # a method's name (in TIMELINE) and its parameters


class Reads:
    """The calls of the cases, their parameters drawn at random from the history `ds`."""

    def __init__(self, ds: Dataset, seed: int = 5) -> None:
        self.rng = random.Random(seed)
        self.gen = TextGen(seed=seed + 3)
        self.roots: list[list[Any]] = ds.info["sample_roots"]
        self.sidebars: list[list[Any]] = ds.info["sample_sidebars"] or [
            [r[1], 0] for r in self.roots
        ]

    def page(self) -> Call:
        _, ctx, own = self.rng.choice(self.roots)
        after = self.rng.randrange(0, max(1, own - 100))
        return "ListBlocks", {"context_id": ctx, "after": after, "limit": 100}

    def history_side(self) -> Call:
        return "GetHistory", {"context_id": self.rng.choice(self.sidebars)[0]}

    def history_root(self) -> Call:
        return "GetHistory", {"context_id": self.rng.choice(self.roots)[1], "limit": 100}

    def search_word(self) -> Call:
        return "SearchBlocks", {"query": self.gen.word(0, 4000)}

    def search_two(self) -> Call:
        return "SearchBlocks", {"query": f"{self.gen.word(0, 4000)} {self.gen.word(0, 4000)}"}

    def search_common(self) -> Call:
        return "SearchBlocks", {"query": self.gen.word(0, 10)}


def served_history(env: Env, name: str) -> tuple[Dataset, Config]:
    """The cached history of `env.big` events, installed clean in a fresh scratch directory."""
    ds = dataset(env.cache, env.big)
    config = write_config(env.scratch(name))
    ds.install(config, clean=True)
    return ds, config


def run(env: Env) -> None:
    res = env.results
    n = env.big
    ds, config = served_history(env, "query")
    reads = Reads(ds)
    calls = 200 if env.quick else 2000

    cases: list[tuple[str, Callable[[], Call], Target | None, int]] = [
        ("ListBlocks, page of 100", reads.page, Target("<=", 2.0, "issue 8"), calls),
        ("GetHistory, a sidebar (inherited + own)", reads.history_side, None, calls),
        ("GetHistory, a root context, limit 100", reads.history_root, None, calls),
        (
            "SearchBlocks, one random vocabulary word",
            reads.search_word,
            Target("<=", 20, "issue 8"),
            calls,
        ),
        ("SearchBlocks, two random words", reads.search_two, None, calls),
        (
            "SearchBlocks, one of the 10 most common words",
            reads.search_common,
            None,
            min(40, calls // 5),
        ),
    ]
    with Daemon(config) as daemon:
        daemon.start()
        with WireClient(daemon.socket_path) as client:
            for name, make, target, count in cases:
                for _ in range(min(20, count)):  # warm the page cache and the statements
                    method, params = make()
                    client.call(f"{TIMELINE}.{method}", params)
                lat = []
                for _ in range(count):
                    method, params = make()
                    lat.append(client.timed(f"{TIMELINE}.{method}", params))
                s = summary_ms(lat)
                res.add(
                    PART,
                    f"{name}: p99",
                    s["p99_ms"],
                    "ms",
                    target=target,
                    detail=s,
                    note=f"p50 {s['p50_ms']:.2f} ms, max {s['max_ms']:.1f} ms, "
                    f"{count} calls at {env.label(n)} events",
                )
                res.add(PART, f"{name}: p50", s["p50_ms"], "ms", quiet=True)
        daemon.stop()
