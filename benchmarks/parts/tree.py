"""The Merkle tree's cost per append (issue 19), measured in process on the daemon's own code.

`LogTree.on_commit` is what the daemon runs on its event loop after each committed batch: per
record, the line re-encoded (`encode_record`, checked against the record's hash), its leaf hash
and the tree's level files appended (buffered, written every 256 KiB). The split says what a
hook on the writer's thread would save: there the line's bytes are at hand, so only the hashing
and the append would remain. Batches of 1 (one connection) and of 64 (group commit under load).
Then the proof lookups an auditor's calls make, on a tree of N leaves on disk.
"""

from __future__ import annotations

import time

from benchmarks.env import Env
from benchmarks.stats import median
from timelined.auditlog.record import GENESIS_PREV, encode_record
from timelined.events import Actor, BlockAppended, BlockData, Record
from timelined.transparency import merkle
from timelined.treestore.levels import LevelFiles
from timelined.treestore.logtree import LogTree

PART = "tree"


def _records(n: int) -> tuple[list[Record], list[bytes]]:
    """`n` block events and their log lines (newline included), as the writer makes them."""
    prev, out, lines = GENESIS_PREV, [], []
    actor = Actor(uid=1000, gid=1000, pid=4242)
    for seq in range(1, n + 1):
        block = BlockData(
            id=f"blk_{seq:026d}",
            context_id="ctx_01jd0000000000000000000000",
            role="user",
            content="x" * 200,
            timestamp="2026-01-01T00:00:00.000000Z",
        )
        record, line = encode_record(
            seq, "2026-01-01T00:00:00.000000Z", actor, BlockAppended(block=block), prev
        )
        prev = record.hash
        out.append(record)
        lines.append(line)
    return out, lines


def run(env: Env) -> None:
    res = env.results
    n = 2_000 if env.quick else 100_000
    records, written = _records(n)
    for batch in (1, 64):
        times = []
        for _ in range(3):
            tree = LogTree(LevelFiles.open(env.scratch("tree")))
            start = time.perf_counter()
            for i in range(0, n, batch):
                tree.on_commit(records[i : i + batch], written[i : i + batch])
            times.append((time.perf_counter() - start) / n * 1e6)
            tree.close()
        res.add(PART, f"on_commit per record, batches of {batch}", median(times), "µs")
    lines = [line[:-1] for line in written]
    files = LevelFiles.open(env.scratch("tree"))
    start = time.perf_counter()
    for line in lines:
        files.append(merkle.leaf_hash(line))
    files.flush()
    res.add(
        PART, "of which leaf hash + level append", (time.perf_counter() - start) / n * 1e6, "µs"
    )
    lookups = 1_000
    start = time.perf_counter()
    for i in range(lookups):
        merkle.inclusion_proof(files, (i * 7919) % n, n)
    res.add(
        PART, f"inclusion proof, tree of {n:,}", (time.perf_counter() - start) / lookups * 1e6, "µs"
    )
    start = time.perf_counter()
    for i in range(lookups):
        merkle.consistency_proof(files, 1 + (i * 7919) % (n - 1), n)
    res.add(
        PART,
        f"consistency proof, tree of {n:,}",
        (time.perf_counter() - start) / lookups * 1e6,
        "µs",
    )
    files.close()
