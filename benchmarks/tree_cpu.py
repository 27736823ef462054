"""The Merkle tree's commit subscriber's CPU per append, in process (no engine, no socket).

`python benchmarks/tree_cpu.py [--batch 1] [--appends 100000] [--read-every 0]`. A tree is
opened on a scratch directory and given `--appends` committed lines of ~500 bytes, `--batch`
per `on_commit` call (1: the daemon at one connection; ~30 at 64); with `--read-every N` a root
is read after every N calls (a proof or a checkpoint asked that often). Prints one JSON line: the
thread's CPU per append, the final flush included. Run from another commit's copy (PYTHONPATH)
to compare: the subscriber is a few µs of an append's hundreds, below the socket A/B's noise.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from timelined.auditlog.record import GENESIS_PREV, encode_record
from timelined.events import ConversationCreated, Record
from timelined.treestore.levels import LevelFiles
from timelined.treestore.logtree import LogTree


def _lines(n: int) -> list[tuple[Record, bytes]]:
    prev, out = GENESIS_PREV, []
    for seq in range(1, n + 1):
        event = ConversationCreated(
            conversation_id=f"conv_{seq:026d}",
            name="x" * 140,
            root_context_id=f"ctx_{seq:026d}",
        )
        record, line = encode_record(seq, "2026-12-07T12:00:00.000000Z", "daemon", event, prev)
        prev = record.hash
        out.append((record, line))
    return out


def measure(batch: int, appends: int, read_every: int) -> dict[str, object]:
    committed = _lines(appends)
    calls = [
        ([r for r, _ in committed[i : i + batch]], [line for _, line in committed[i : i + batch]])
        for i in range(0, appends, batch)
    ]
    with tempfile.TemporaryDirectory(prefix="tree-cpu") as tmp:
        tree = LogTree(LevelFiles.open(Path(tmp) / "tree"))
        cpu0 = time.thread_time()
        for n, (records, lines) in enumerate(calls, 1):
            tree.on_commit(records, lines)
            if read_every and n % read_every == 0:
                tree.root(tree.size)
        tree.files.flush()
        cpu = time.thread_time() - cpu0
        assert tree.size == appends and tree.broken is None
        tree.close()
    return {
        "batch": batch,
        "appends": appends,
        "read_every": read_every,
        "line_bytes": round(sum(len(line) for _, line in committed) / appends),
        "cpu_us_per_append": round(cpu / appends * 1e6, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--appends", type=int, default=100_000)
    parser.add_argument("--read-every", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(measure(args.batch, args.appends, args.read_every)), flush=True)


if __name__ == "__main__":
    main()
