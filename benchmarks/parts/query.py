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
from benchmarks.dataset import TextGen, dataset
from benchmarks.env import Env
from benchmarks.report import Target
from benchmarks.stats import summary_ms
from benchmarks.wire import TIMELINE, WireClient

PART = "query"


def run(env: Env) -> None:
    res = env.results
    n = env.big
    ds = dataset(env.cache, n)
    config = write_config(env.scratch("query"))
    ds.install(config, clean=True)
    rng = random.Random(5)
    gen = TextGen(seed=8)
    roots: list[list[Any]] = ds.info["sample_roots"]
    sidebars: list[list[Any]] = ds.info["sample_sidebars"] or [[r[1], 0] for r in roots]
    calls = 200 if env.quick else 2000

    def page() -> tuple[str, dict[str, Any]]:
        _, ctx, own = rng.choice(roots)
        after = rng.randrange(0, max(1, own - 100))
        return "ListBlocks", {"context_id": ctx, "after": after, "limit": 100}

    def history_side() -> tuple[str, dict[str, Any]]:
        return "GetHistory", {"context_id": rng.choice(sidebars)[0]}

    def history_root() -> tuple[str, dict[str, Any]]:
        return "GetHistory", {"context_id": rng.choice(roots)[1], "limit": 100}

    def search_word() -> tuple[str, dict[str, Any]]:
        return "SearchBlocks", {"query": gen.word(0, 4000)}

    def search_two() -> tuple[str, dict[str, Any]]:
        return "SearchBlocks", {"query": f"{gen.word(0, 4000)} {gen.word(0, 4000)}"}

    def search_common() -> tuple[str, dict[str, Any]]:
        return "SearchBlocks", {"query": gen.word(0, 10)}

    cases: list[tuple[str, Callable[[], tuple[str, dict[str, Any]]], Target | None, int]] = [
        ("ListBlocks, page of 100", page, Target("<=", 2.0, "issue 8"), calls),
        ("GetHistory, a sidebar (inherited + own)", history_side, None, calls),
        ("GetHistory, a root context, limit 100", history_root, None, calls),
        (
            "SearchBlocks, one random vocabulary word",
            search_word,
            Target("<=", 20, "issue 8"),
            calls,
        ),
        ("SearchBlocks, two random words", search_two, None, calls),
        (
            "SearchBlocks, one of the 10 most common words",
            search_common,
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
