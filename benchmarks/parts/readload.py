"""Read latency while 64 connections append, beside the same reads with no writes.

The daemon serves the cached 1M-event history (verifier off), as in the query part. One client
connection in this process calls three reads in turn, sequentially: a ListBlocks page of 100, a
root context's GetHistory (limit 100) and a SearchBlocks of one vocabulary word (the query
part's parameters). Each round measures them first with no writes, then while the load
generator (`benchmarks.loadgen`, the socket part's) keeps 64 connections appending, one
AppendBlock in flight each, for one window. The samples of all rounds are pooled per read and
phase; the loaded p50 and p99 are also given as multiples of the unloaded ones.

Why it is measured: reads are read-your-writes. A read waits until the state holds every event
acknowledged before it, and a search until the index does (docs/architecture.md, "The write
path"); since the writer answers a batch after the log's fsync and COMMITs later, a read issued
while clients append waits for a COMMIT (and a search for the index's transaction too). The
query part has no writes, so only this part sees that wait. The load's own appends/s, latency
and mean batch are recorded with each run, so that a read that got faster by slowing the
writers down shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from benchmarks.daemon import Daemon
from benchmarks.env import Env
from benchmarks.loadgen import Load
from benchmarks.parts.query import Call, Reads, served_history
from benchmarks.parts.socket import batch_counts
from benchmarks.stats import median, summary_ms
from benchmarks.wire import TIMELINE, WireClient

PART = "readload"
CONNS = 64
WARMUP_S = 0.3  # the load generator's own warm-up before its window (loadgen's default)


def _cases(reads: Reads) -> list[tuple[str, Callable[[], Call]]]:
    return [
        ("ListBlocks, page of 100", reads.page),
        ("GetHistory, a root context, limit 100", reads.history_root),
        ("SearchBlocks, one random vocabulary word", reads.search_word),
    ]


def _round_robin(
    client: WireClient,
    cases: list[tuple[str, Callable[[], Call]]],
    samples: dict[str, list[float]],
    *,
    calls: int | None = None,
    until: float | None = None,
) -> None:
    """Each case in turn, `calls` of each or until `until` (perf_counter): both phases see the
    three reads interleaved the same way."""
    done = 0
    while (calls is None or done < calls) and (until is None or time.perf_counter() < until):
        for name, make in cases:
            method, params = make()
            samples[name].append(client.timed(f"{TIMELINE}.{method}", params))
        done += 1


def run(env: Env) -> None:
    res = env.results
    n = env.big
    ds, config = served_history(env, "readload")
    cases = _cases(Reads(ds))
    conns = 8 if env.quick else CONNS
    window = 1.0 if env.quick else 6.0
    rounds = 1 if env.quick else 3
    quiet_calls = 20 if env.quick else 200
    quiet: dict[str, list[float]] = {name: [] for name, _ in cases}
    loaded: dict[str, list[float]] = {name: [] for name, _ in cases}
    loads: list[dict[str, float]] = []
    with Daemon(config) as daemon:
        daemon.start()
        sock = str(daemon.socket_path)
        with WireClient(daemon.socket_path) as client:
            _round_robin(client, cases, {name: [] for name, _ in cases}, calls=20)  # warm
            for _ in range(rounds):
                _round_robin(client, cases, quiet, calls=quiet_calls)
                load = Load(sock, conns, window, warmup=WARMUP_S)
                batches0, commands0 = batch_counts(sock)
                load.go()
                start = time.perf_counter()
                # Only inside the load's window: its warm-up has the connections going, and the
                # reads stop a little before its end so that none runs after the appends stop.
                time.sleep(WARMUP_S + 0.1)
                _round_robin(client, cases, loaded, until=start + WARMUP_S + window - 0.1)
                (run_,) = load.results()
                batches1, commands1 = batch_counts(sock)
                run_["mean_batch"] = (commands1 - commands0) / max(1.0, batches1 - batches0)
                loads.append(run_)
        daemon.stop()
    for name, _ in cases:
        q, w = summary_ms(quiet[name]), summary_ms(loaded[name])
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
            res.add(
                PART,
                f"{name}, no writes: {label}",
                q[key],
                "ms",
                detail=q,
                note=f"{int(q['n'])} calls at {env.label(n)} events",
                quiet=key == "p50_ms",
            )
            res.add(
                PART,
                f"{name}, {conns} conns appending: {label}",
                w[key],
                "ms",
                ratio_to=(f"no writes {label}", q[key]),
                detail=w,
                note=f"max {w['max_ms']:.1f} ms, {int(w['n'])} calls in {rounds} windows "
                f"of {window:g} s",
            )
    rate = median([r["rate"] for r in loads])
    res.add(
        PART,
        f"the {conns} appending conns beside the reads: appends/s",
        rate,
        "appends/s",
        detail={"runs": loads},
        note=f"append p50 {median([r['p50_ms'] for r in loads]):.1f} ms, "
        f"p99 {median([r['p99_ms'] for r in loads]):.1f} ms, "
        f"mean batch {median([r['mean_batch'] for r in loads]):.1f} (medians of {rounds})",
    )
