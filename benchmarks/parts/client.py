"""What `import timelined.client` costs a program that only talks to the daemon.

Each figure is the median of fresh interpreters (`sys.executable`):
- wall clock of `python -c "import timelined.client"` minus that of `python -c pass` (the
  interpreter's own start-up), its ratio to that start-up beside it;
- the cumulative time `python -X importtime` reports for `timelined.client`, with the number of
  modules the import brings in (and which of the server's, if any: tests/client/test_import.py
  keeps that list from growing).
"""

from __future__ import annotations

import subprocess
import sys
import time

from benchmarks.env import Env
from benchmarks.stats import median

PART = "client"
MODULE = "timelined.client"
SERVER_SIDE = ("timelined.writer", "timelined.state", "timelined.auditlog.writer", "sqlite3")


def _wall_s(statement: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True)
    return time.perf_counter() - t0


def _importtime() -> tuple[float, list[str]]:
    """`timelined.client`'s cumulative import time (s) and every module imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {MODULE}"],
        capture_output=True,
        text=True,
        check=True,
    )
    cumulative = float("nan")
    modules: list[str] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        _self, cumulative_us, name = (part.strip() for part in line.split("|"))
        modules.append(name)
        if name == MODULE:
            cumulative = int(cumulative_us) / 1e6
    return cumulative, modules


def run(env: Env) -> None:
    rounds = 3 if env.quick else 15
    bare: list[float] = []
    loaded: list[float] = []
    for _ in range(rounds):  # interleaved, so that a load change touches both alike
        bare.append(_wall_s("pass"))
        loaded.append(_wall_s(f"import {MODULE}"))
    startup = median(bare)
    net = max(median(loaded) - startup, 0.0)
    env.results.add(
        PART,
        f"import {MODULE} (wall, net of start-up)",
        net * 1000,
        "ms",
        ratio_to=("interpreter start-up", startup * 1000),
        detail={"rounds": rounds, "startup_ms": round(startup * 1000, 2)},
    )
    runs = [_importtime() for _ in range(rounds)]
    modules = runs[-1][1]
    server_side = sorted(m for m in modules if m.startswith(SERVER_SIDE))
    env.results.add(
        PART,
        f"import {MODULE} (-X importtime, cumulative)",
        median([r[0] for r in runs]) * 1000,
        "ms",
        detail={"modules": len(modules), "server_side_modules": server_side},
        note=f"{len(modules)} modules, {len(server_side)} of them the server's",
    )
