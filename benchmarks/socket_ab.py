"""One A/B side of the socket part: `python benchmarks/socket_ab.py [CxD | CxDxB ...]`.

Run from the root of the code to measure (a fresh copy of another commit, with PYTHONPATH set to
it, measures that commit: `python -m timelined` starts from the working directory), alternating
the two sides. Prints one JSON line per case (default 64x1 and 64x4; `8x1x100`: 8 connections
calling AppendBlocks of 100 blocks): appends/s (calls/s), the daemon's CPU per append (call) and
its event loop's and writer's shares, the mean batch, the load generator's CPU.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from benchmarks.daemon import Daemon, write_config
from benchmarks.env import RESULTS_DIR, Env
from benchmarks.parts.socket import measure
from benchmarks.report import Results


def main(argv: list[str]) -> None:
    env = Env(quick=False, results=Results(quick=False), root=Path(RESULTS_DIR))
    # CxD: C connections, D calls in flight each; CxDxB: AppendBlocks of B blocks (calls/s).
    cases = [(*map(int, c.split("x")), 1)[:3] for c in argv] or [(64, 1, 1), (64, 4, 1)]
    try:
        with Daemon(write_config(env.scratch("ab"))) as daemon:
            daemon.start()
            for conns, depth, blocks in cases:
                m = measure(daemon, conns, env, depth=depth, blocks=blocks)
                rate = m["rate"]
                row = {
                    "code": os.getcwd(),
                    "case": f"{conns}x{depth}" + (f"x{blocks}" if blocks > 1 else ""),
                    "rate": round(rate),
                    "daemon_us": round(m["daemon_cpu"] / rate * 1e6, 1),
                    "loop_us": round(m["loop_cpu"] / rate * 1e6, 1),
                    "writer_us": round(m["writer_us_per_append"], 1),
                    "batch": round(m["mean_batch"], 1),
                    "load_cpu": round(m["load_cpu"], 2),
                    "p50_ms": m["p50_ms"],
                }
                print(json.dumps(row), flush=True)
            daemon.stop()
    finally:
        env.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
