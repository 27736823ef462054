"""`python -m benchmarks --quick` runs every part's code path and writes valid JSON.

It asserts nothing about speed: it keeps the benchmark code from rotting (`make test` runs it).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.cli import PARTS

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # the PostgreSQL parts start servers and daemons: ~60 s more when loaded
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["quick"] is True
    assert set(doc["parts"]) == set(PARTS)
    for name, part in doc["parts"].items():
        assert part["status"] == "ok", (name, part.get("error"))
        assert part["figures"], name
        for figure in part["figures"]:
            assert figure["status"] in ("PASS", "MISS", "info", "n/a"), figure
    assert doc["limits"]["jsonl_fsync_rate"] > 0
    assert doc["limits"]["jsonl_reserved_p50_ms"] > 0
    assert doc["limits"]["state_blocks64_rate"] > 0
    # The do-nothing server's round trips: the socket ceiling the daemon is read against.
    assert doc["limits"]["echo1_rate"] > 0
    assert doc["limits"]["echo64_rate"] > 0
    # The one-connection ceiling: what a daemon doing nothing but the log's sync would reach.
    socket_figures = {f["name"]: f for f in doc["parts"]["socket"]["figures"]}
    ceiling = socket_figures[
        "1 conn: the SQLite ratio's ceiling here (do-nothing round trip + the log's sync)"
    ]
    floor_ms = doc["limits"]["echo1_p50_ms"] + doc["limits"]["jsonl_reserved_p50_ms"]
    assert ceiling["value"] == pytest.approx(1000 / floor_ms / doc["limits"]["sqlite_full_rate"])
    # Issue 17's 1-connection ratio: interleaved pairs, each side measured, the median kept.
    paired = socket_figures["1 conn: appends/s against an in-process SQLite FULL commit"]
    assert paired["target"] and paired["detail"]["pairs"], paired
    assert paired["value"] == pytest.approx(
        statistics.median(d / q for d, q in paired["detail"]["pairs"])
    )
    # The socket part's profile figures: the daemon's threads and its group-commit batches.
    appends = [f for f in doc["parts"]["socket"]["figures"] if f["name"].endswith("appends/s")]
    assert appends, doc["parts"]["socket"]["figures"]
    for figure in appends:
        detail = figure["detail"]
        assert detail["mean_batch"] >= 1.0, figure["name"]
        assert 0.0 < detail["loop_cpu"] <= detail["daemon_cpu"] + 0.05, figure["name"]
        # At one connection every append is written on the event loop; the writer's thread
        # only COMMITs and indexes, every 80 ms: in a quick window that may stay under one
        # clock tick of /proc (10 ms), so there it may read 0.
        lone = figure["name"].startswith("1 conn")
        writer_ran = detail["writer_cpu"] >= 0.0 if lone else detail["writer_cpu"] > 0.0
        assert writer_ran, figure["name"]
        assert detail["writer_cpu"] <= detail["daemon_cpu"] + 0.05, figure["name"]
        assert detail["load_cpu"] > 0.0, figure["name"]
        both = (detail["daemon_cpu"] + detail["load_cpu"]) / detail["rate"] * 1e6
        assert detail["cpu_us_per_append"] == pytest.approx(both), figure["name"]
        writer = detail["writer_cpu"] / detail["rate"] * 1e6
        assert detail["writer_us_per_append"] == pytest.approx(writer), figure["name"]
