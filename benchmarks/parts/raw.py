"""The machine's own limits, on the filesystem the state directory lives on.

- JSONL append + fsync per record: one `write` of a real log line (an AppendBlock with 320 bytes
  of text, ~700 bytes in all, encoded by `auditlog.encode_record`) then `fsync`, in a loop: what
  one durable append can cost at best.
- the same with one fsync per batch of 64 records (one write of 64 lines): the group-commit
  ceiling that the engine and the socket are compared with.
- one record per `pwrite` into space reserved ahead, then `fdatasync`: the log's own write
  (`[log] reserve_bytes`); with the do-nothing server's round trip below, the socket part's
  ceiling for one connection (`socket`: "the SQLite ratio's ceiling here").
- SQLite (WAL) single-row transactions with `synchronous=FULL` (durable per commit) and `NORMAL`
  (what the state database uses: durable at checkpoints only), and 1000-row transactions.
- the state database's own work for appended blocks, with no rules, no log and no event loop:
  transactions of 64 blocks, one to each of 64 contexts (the engine part's 64 writers), each
  block's row with its two indexes and its full-text row, `meta`, COMMIT — the real schema and
  pragmas (`state.db.open_write`) and the engine's own INSERT. One write connection can do no
  more than this: it is the ceiling of the engine's 64-writer rate on this machine. And the
  same for AppendBlocks' shape: transactions of 100 blocks into one context (a model turn
  written at once), the ceiling of the socket part's AppendBlocks load.
- Varlink round trips through a Unix socket with 1 and 64 connections (one call in flight each),
  and 64 connections pipelining 4 calls each, from the socket part's own load generator (another
  process) to a server that does nothing (`benchmarks.echo`: one fixed reply per frame, on the
  daemon's event loop, no decoding, no disk): the ceiling of what any Python server reaches with
  this client on this machine, and the CPU both sides spend on it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.dataset import TextGen
from benchmarks.env import Env, short_socket_path
from benchmarks.loadgen import Load
from benchmarks.procstat import cpu_seconds
from benchmarks.stats import median, summary_ms
from timelined.auditlog.record import GENESIS_PREV, encode_record
from timelined.events import Actor, BlockAppended, BlockData
from timelined.state.apply import INSERT_BLOCK, dump_json, insert_fts, set_meta
from timelined.state.db import open_write

PART = "raw"
BLOCKS_PER_CALL = 100  # the shape of issue 17's AppendBlocks target (the socket part's load)


def sample_line(content_bytes: int = 320) -> bytes:
    """One log line as the daemon writes it for an AppendBlock of `content_bytes` of text."""
    text = ("lorem ipsum dolor sit amet consectetur " * 20)[:content_bytes]
    event = BlockAppended(
        block=BlockData(
            id="blk_01jd7k3m4n5p6q7r8s9t0v1w2x",
            context_id="ctx_01jd7k3m4n5p6q7r8s9t0v1w2x",
            role="user",
            content=text,
            timestamp="2026-01-01T00:00:00.000000Z",
        )
    )
    _, line = encode_record(
        1, "2026-01-01T00:00:00.000000Z", Actor(uid=1000, gid=1000, pid=4242), event, GENESIS_PREV
    )
    return line


def _loop(window: float, step: Callable[[], int]) -> tuple[float, list[float]]:
    """Run `step` (returns records done) for `window` seconds: (records/s, step latencies)."""
    lat: list[float] = []
    done = 0
    clock = time.perf_counter
    start = clock()
    end = start + window
    now = start
    while now < end:
        t = clock()
        done += step()
        now = clock()
        lat.append(now - t)
    return done / (now - start), lat


def jsonl(path: Path, window: float, batch: int) -> tuple[float, list[float]]:
    line = sample_line()
    data = line * batch
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)  # the file exists and has blocks before the clock starts

        def step() -> int:
            os.write(fd, data)
            os.fsync(fd)
            return batch

        return _loop(window, step)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


RESERVE_CHUNK = 4 << 20  # as the log's writer reserves by default (`[log] reserve_bytes`)


def jsonl_reserved(path: Path, window: float) -> tuple[float, list[float]]:
    """One line per `pwrite` into space `posix_fallocate` reserved ahead, then `fdatasync`: the
    log's own write since it reserves (auditlog/writer.py). The size does not change per write,
    so the sync has no metadata to write; the reservation is extended, untimed, when used up."""
    line = sample_line()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        offset = reserved = 0

        def reserve() -> None:
            nonlocal reserved
            os.posix_fallocate(fd, reserved, RESERVE_CHUNK)
            os.fsync(fd)
            reserved += RESERVE_CHUNK

        reserve()

        def step() -> int:
            nonlocal offset
            if offset + len(line) > reserved:
                reserve()  # once per ~6,000 lines; the log's writer does it in the same place
            os.pwrite(fd, line, offset)
            offset += len(line)
            os.fdatasync(fd)
            return 1

        step()  # the first write converts the first block: before the clock starts
        return _loop(window, step)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def sqlite_rows(path: Path, window: float, sync: str, rows: int) -> tuple[float, list[float]]:
    _remove_db(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {sync}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")
        payload = sample_line().decode()
        values = [(payload,)] * rows

        def step() -> int:
            conn.execute("BEGIN")
            if rows == 1:
                conn.execute("INSERT INTO t (data) VALUES (?)", values[0])
            else:
                conn.executemany("INSERT INTO t (data) VALUES (?)", values)
            conn.execute("COMMIT")
            return rows

        return _loop(window, step)
    finally:
        conn.close()
        _remove_db(path)


def state_blocks(
    path: Path, window: float, contexts: int = 64, per_context: int = 1
) -> tuple[float, list[float]]:
    """Blocks/s the state database takes in transactions of `per_context` blocks to each of
    `contexts` contexts (see the docstring)."""
    _remove_db(path)
    conn = open_write(path)
    try:
        gen = TextGen()
        texts = [gen.text() for _ in range(512)]
        ids = [f"ctx_{n:026d}" for n in range(contexts)]
        empty_object, empty_list = dump_json({}), dump_json([])
        ts = "2026-01-01T00:00:00.000000Z"
        seq = 0

        def step() -> int:
            nonlocal seq
            rows = []
            for context_id in ids:
                for _ in range(per_context):
                    seq += 1
                    text = texts[seq % len(texts)]
                    block = (seq, f"blk_{seq:026d}", context_id, None, "user", text, ts)
                    rows.append((*block, None, None, None, empty_object, empty_list))
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT_BLOCK, rows)
            insert_fts(conn, [(row[0], row[5]) for row in rows])
            set_meta(conn, seq, "0" * 64)
            conn.execute("COMMIT")
            return len(rows)

        for _ in range(16):  # every context has blocks, and the indexes some depth
            step()
        return _loop(window, step)
    finally:
        conn.close()
        _remove_db(path)


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def round_trips(
    directory: Path, conns: int, window: float, repeats: int, depth: int = 1
) -> dict[str, Any]:
    """The load generator's round trips/s against the do-nothing server, and both sides' CPU."""
    path = short_socket_path(directory, f"e{conns}x{depth}")
    path.unlink(missing_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.echo", str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the do-nothing server did not start (exit {server.poll()})")
        load = Load(
            str(path), conns, window, repeats=repeats, contexts=["ctx_-"] * conns, depth=depth
        )
        cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
        runs = load.run()
        server_cpu = (cpu_seconds(server.pid) - cpu0) / (time.perf_counter() - t0)
    finally:
        server.kill()
        server.wait()
    mid = sorted(runs, key=lambda r: r["rate"])[(len(runs) - 1) // 2]
    return {
        "rate": median([r["rate"] for r in runs]),
        "p50_ms": mid["p50_ms"],
        "p99_ms": mid["p99_ms"],
        "server_cpu": server_cpu,
        "load_cpu": mid["cpu"],
        "runs": [r["rate"] for r in runs],
    }


def run(env: Env) -> None:
    res = env.results
    lim = res.limits
    res.part_data(PART)["line_bytes"] = len(sample_line())
    d = env.scratch("raw")

    cases: list[tuple[str, str, Callable[[], tuple[float, list[float]]]]] = [
        ("jsonl_fsync", "JSONL append+fsync per record", lambda: jsonl(d / "a.jsonl", w, 1)),
        ("jsonl_batch64", "JSONL one fsync per 64 records", lambda: jsonl(d / "b.jsonl", w, 64)),
        (
            "jsonl_reserved",
            "JSONL pwrite into reserved space+fdatasync per record (the log's write)",
            lambda: jsonl_reserved(d / "r.jsonl", w),
        ),
        (
            "sqlite_full",
            "SQLite WAL 1-row txn, synchronous=FULL",
            lambda: sqlite_rows(d / "f.db", w, "FULL", 1),
        ),
        (
            "sqlite_normal",
            "SQLite WAL 1-row txn, synchronous=NORMAL",
            lambda: sqlite_rows(d / "n.db", w, "NORMAL", 1),
        ),
        (
            "sqlite_1000_full",
            "SQLite WAL 1000-row txns, synchronous=FULL",
            lambda: sqlite_rows(d / "g.db", w, "FULL", 1000),
        ),
        (
            "sqlite_1000_normal",
            "SQLite WAL 1000-row txns, synchronous=NORMAL",
            lambda: sqlite_rows(d / "m.db", w, "NORMAL", 1000),
        ),
        (
            "state_blocks64",
            "SQLite, the state's schema: 64-block txns (no rules, no log)",
            lambda: state_blocks(d / "s.db", w),
        ),
        (
            "state_blocks100x1",
            "SQLite, the state's schema: 100-block txns into one context (no rules, no log)",
            lambda: state_blocks(d / "s.db", w, contexts=1, per_context=BLOCKS_PER_CALL),
        ),
    ]
    w = env.window_s / 2 if not env.quick else 0.2
    for key, name, fn in cases:
        runs = [fn() for _ in range(env.repeats)]
        rates = [r[0] for r in runs]
        rate = median(rates)
        best = sorted(runs, key=lambda r: r[0])[(len(runs) - 1) // 2]
        lat = summary_ms(best[1])
        lim[f"{key}_rate"] = rate
        lim[f"{key}_p50_ms"] = lat["p50_ms"]
        lim[f"{key}_p99_ms"] = lat["p99_ms"]
        unit_lat = "per write+fsync" if key.startswith("jsonl") else "per commit"
        res.add(
            PART,
            f"{name}: rate",
            rate,
            "records/s"
            if key.startswith("jsonl")
            else "blocks/s"
            if key.startswith("state")
            else "rows/s",
            detail={"runs": rates, **lat},
            note=f"p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms {unit_lat}",
        )
    res.add(
        PART,
        "JSONL append+fsync per record: p50 latency",
        lim["jsonl_fsync_p50_ms"],
        "ms",
    )
    for conns, depth in ((1, 1), (64, 1), (64, 4)):
        rt = round_trips(d, conns, env.window_s, env.repeats, depth)
        key = f"echo{conns}" if depth == 1 else f"echo{conns}x{depth}"
        lim[f"{key}_rate"] = rt["rate"]
        lim[f"{key}_p50_ms"] = rt["p50_ms"]
        per = (rt["server_cpu"] + rt["load_cpu"]) / rt["rate"] * 1e6 if rt["rate"] > 0 else 0.0
        label = f"{conns} conn{'s' if conns > 1 else ''}"
        if depth > 1:
            label += f" pipelining {depth} deep"
        res.add(
            PART,
            f"Varlink round trips, do-nothing server, {label}",
            rt["rate"],
            "round trips/s",
            detail=rt,
            note=(
                f"p50 {rt['p50_ms']:.3f} ms, p99 {rt['p99_ms']:.3f} ms; CPU: server "
                f"{rt['server_cpu']:.2f}, load generator {rt['load_cpu']:.2f}, "
                f"{per:.0f} µs per round trip in both"
            ),
        )
