"""`python -m benchmarks [--quick] [--out FILE] [--keep] [PART ...]`.

Parts, in the order they run: raw, engine, socket, tree, boot, verify, query, readload, memory,
client, adapters, pg, pgverify (all by default).
The JSON goes to `--out`, else `benchmarks/results/<date>.json` (`<date>-quick.json` for
`--quick`); the table is printed at the end. `--quick` runs every part's code path on small N in
seconds and asserts nothing about speed (tests/test_bench_quick.py runs it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from benchmarks.env import RESULTS_DIR, Env
from benchmarks.report import Results

PARTS = (
    "raw",
    "engine",
    "socket",
    "tree",
    "boot",
    "verify",
    "query",
    "readload",
    "memory",
    "client",
    "adapters",
    "pg",
    "pgverify",
)


def _module(part: str) -> ModuleType:
    return importlib.import_module(f"benchmarks.parts.{part}")


def _runner(part: str) -> Callable[[Env], None]:
    fn: Callable[[Env], None] = _module(part).run
    return fn


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("parts", nargs="*", metavar="PART", help=f"any of {', '.join(PARTS)}")
    p.add_argument("--quick", action="store_true", help="small N, seconds; asserts nothing")
    p.add_argument("--out", type=Path, help="the JSON file to write")
    p.add_argument(
        "--dir",
        type=Path,
        default=RESULTS_DIR,
        help="where scratch state dirs and the dataset cache live (the filesystem measured)",
    )
    p.add_argument(
        "--verify-events",
        type=int,
        default=None,
        help="history size of the verify part (default: the 1M of a full run, 2k with --quick)",
    )
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    p.add_argument("--plots", action="store_true", help="write PNG plots (needs matplotlib)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        build_parser().error(f"unknown part(s) {', '.join(unknown)}; parts are {', '.join(PARTS)}")
    parts = [p for p in PARTS if p in args.parts] if args.parts else list(PARTS)
    results = Results(quick=args.quick)
    env = Env(quick=args.quick, results=results, root=args.dir)
    env._limit_source = _runner("raw")
    env.verify_events = args.verify_events
    started = time.perf_counter()
    failed: list[str] = []
    try:
        for part in parts:
            print(f"== {part}", flush=True)
            t0 = time.perf_counter()
            data = results.part_data(part)
            try:
                _runner(part)(env)
                data["status"] = "ok"
            except Exception as exc:
                traceback.print_exc()
                data["status"] = "error"
                data["error"] = f"{type(exc).__name__}: {exc}"
                failed.append(part)
            data["seconds"] = round(time.perf_counter() - t0, 2)
    finally:
        env.cleanup()
    elapsed = time.perf_counter() - started
    doc = results.document(parts, elapsed)
    out = args.out or (
        env.root / f"{results.started:%Y-%m-%d}{'-quick' if args.quick else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_clean(doc), indent=2, allow_nan=False) + "\n")
    print()
    print(results.table())
    if args.markdown:
        print()
        print(results.markdown())
    if args.plots:
        from benchmarks.plots import plot

        print(plot(doc, out.with_suffix("")))
    print(
        f"\n{doc['summary']['pass']} PASS, {doc['summary']['miss']} MISS; wrote {out} "
        f"({elapsed:.0f} s)"
    )
    if failed:
        print(f"parts that failed to run: {', '.join(failed)}")
        return 1
    return 0


def _clean(value: object) -> object:
    """JSON has no NaN: an unmeasured figure is null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
