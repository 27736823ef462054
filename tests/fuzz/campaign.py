"""The fuzzing campaign against a running daemon, shared by tests/fuzz and tests/stress.

`FuzzTarget` wraps a real `timelined serve` (DaemonProcess): a seeded world (conversations,
contexts in every status, blocks) whose ids feed the strategies, a canary client that must keep
getting correct answers throughout, counters for the summary line, and the daemon's memory at
the start. `run_*` functions run one Hypothesis campaign with a given number of examples.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as fixed_seed
from hypothesis import strategies as st

from tests.daemon.harness import DaemonProcess, short_tempdir
from tests.fuzz.strategies import IdPool, Payload, payloads, render
from tests.fuzz.wire import (
    STREAM,
    Canary,
    Violation,
    check_exchange,
    classify,
    exchange,
    open_sockets,
    rss_kib,
)
from timelined.varlink.client import Connection
from timelined.varlink.errors import VarlinkError

# The fuzz daemon's limits: small enough that the fuzzer reaches them, large enough for real use.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_BLOCK_BYTES = 32 * 1024
# Memory the daemon may gain over a campaign (SQLite page cache, Python's arenas, the id maps
# of the engine grow with the data the fuzzer writes): a leak per call would exceed it.
RSS_MARGIN_KIB = 96 * 1024
EXCHANGE_TIMEOUT_S = 30.0
WATCH_READ_S = 3.0


@dataclass
class FuzzStats:
    trials: int = 0
    frames: int = 0
    bytes: int = 0
    crashes: int = 0
    hangs: int = 0
    violations: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first few failures, for the report

    def fail(self, kind: str, detail: str) -> None:
        self.violations[kind] += 1
        if kind == "hang":
            self.hangs += 1
        if kind == "crash":
            self.crashes += 1
        if len(self.examples) < 10:
            self.examples.append(f"{kind}: {detail[:2000]}")


class DaemonCrashed(AssertionError):
    pass


@dataclass
class FuzzTarget:
    daemon: DaemonProcess
    pool: IdPool
    canary: Canary
    stats: FuzzStats = field(default_factory=FuzzStats)
    rss_start_kib: int = 0
    sockets_start: int = 0

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    @property
    def socket_path(self) -> Path:
        return self.daemon.socket_path

    def alive(self) -> bool:
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.daemon.log().splitlines()[-n:])

    def logged_failures(self) -> list[str]:
        """Tracebacks and errors in the daemon's log: each one is a bug the fuzzer found."""
        lines = self.daemon.log().splitlines()
        out: list[str] = []
        for n, line in enumerate(lines):
            if line.startswith("Traceback") or " ERROR " in line or " CRITICAL " in line:
                out.append("\n".join(lines[max(0, n - 1) : n + 30]))
        return out

    def summary(self) -> str:
        canary = self.canary.report()
        return (
            f"fuzz: trials={self.stats.trials} frames={self.stats.frames} "
            f"crashes={self.stats.crashes} hangs={self.stats.hangs} "
            f"canary_failures={len(canary.failures)}"
        )

    def problems(self) -> list[str]:
        """Everything that went wrong so far, for an assertion message (empty: all good)."""
        out = list(self.stats.examples)
        out += [f"canary: {f}" for f in self.canary.failures]
        out += [f"daemon log: {f}" for f in self.logged_failures()[:5]]
        if not self.alive():
            out.append(f"daemon died; its log ends:\n{self.log_tail()}")
        return out


def _call(path: Path, method: str, params: dict[str, Any]) -> dict[str, Any]:
    conn = Connection.open(path, timeout=30)
    try:
        return conn.call(method, params)
    finally:
        conn.close()


def seed_world(path: Path) -> IdPool:
    """Conversations with contexts in every status and a few blocks: ids for the fuzzer."""
    pool = IdPool()
    t = "io.timelined.Timeline."
    for n in range(2):
        conv = _call(path, t + "CreateConversation", {"name": f"fuzz {n}"})["conversation"]
        root = conv["root_context_id"]
        pool.conversations.append(conv["id"])
        pool.contexts.append(root)
        side = _call(path, t + "SpawnSidebar", {"parent_id": root, "reason": "s"})["context"]
        merged = _call(path, t + "SpawnSidebar", {"parent_id": side["id"], "reason": "m"})
        archived = _call(path, t + "SpawnSidebar", {"parent_id": side["id"], "reason": "a"})
        for ctx in (side["id"], merged["context"]["id"], archived["context"]["id"]):
            pool.contexts.append(ctx)
            for i in range(3):
                block = _call(
                    path,
                    t + "AppendBlock",
                    {"context_id": ctx, "role": "user", "content": f"seed {i} 🦜"},
                )["block"]
                pool.blocks.append(block["id"])
        _call(path, t + "MergeContext", {"id": merged["context"]["id"], "summary": "done"})
        _call(path, t + "ArchiveContext", {"id": archived["context"]["id"]})
    pool.seeds = len(pool.contexts)
    return pool


@contextlib.contextmanager
def fuzz_target(**limits: Any) -> Iterator[FuzzTarget]:
    """A fresh daemon with a seeded world and a running canary."""
    with short_tempdir("tlf") as base:
        lim = {"max_message_bytes": MAX_MESSAGE_BYTES, "max_block_bytes": MAX_BLOCK_BYTES}
        lim.update(limits)
        daemon = DaemonProcess(base, limits=lim).start()
        try:
            pool = seed_world(daemon.socket_path)
            canary_conv = _call(
                daemon.socket_path, "io.timelined.Timeline.CreateConversation", {"name": "canary"}
            )["conversation"]
            pool.exclude |= {canary_conv["id"], canary_conv["root_context_id"]}
            canary = Canary(daemon.socket_path, canary_conv["root_context_id"]).start()
            target = FuzzTarget(daemon, pool, canary)
            target.rss_start_kib = target.rss_kib()
            target.sockets_start = open_sockets(target.pid)
            try:
                yield target
            finally:
                canary.stop()
        finally:
            if daemon.proc is not None and daemon.proc.poll() is None:
                code = daemon.stop()
                assert code == 0, f"the daemon exited {code} on SIGTERM:\n{daemon.log()[-5000:]}"
            else:
                daemon.kill()


# --- one example --------------------------------------------------------------------------------


def _fuzz_settings(examples: int, seed: int | None) -> settings:
    """Deterministic without a seed (make test); a seeded random run with one (stress)."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        # Shrinking replays examples against a daemon whose state moved on; the failing
        # payload itself is reported instead.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=seed is None,
    )


def _seeded(seed: int | None) -> Any:
    return (lambda fn: fn) if seed is None else fixed_seed(seed)


def stress_seed() -> int:
    """TIMELINED_FUZZ_SEED, or a fresh one (printed by the stress test, to replay a run)."""
    value = os.environ.get("TIMELINED_FUZZ_SEED")
    return int(value) if value else int.from_bytes(os.urandom(4), "big")


def _check_alive(target: FuzzTarget, what: str) -> None:
    if not target.alive():
        target.stats.fail("crash", f"{what}\n{target.log_tail()}")
        raise DaemonCrashed(f"the daemon died after {what}:\n{target.log_tail()}")


def _describe(payload: bytes) -> str:
    return repr(payload[:600]) + (f"... ({len(payload)} bytes)" if len(payload) > 600 else "")


def send_and_check(target: FuzzTarget, spec: Payload) -> None:
    """One payload, then a half-close: every reply as the oracle says, nothing left hanging."""
    data, chunks = render(spec, target.pool)
    target.stats.trials += 1
    target.stats.frames += data.count(b"\0") + (0 if data.endswith(b"\0") or not data else 1)
    target.stats.bytes += len(data)
    # A Watch with `more` streams for as long as its client listens (a half-close does not
    # end it: the client still reads). Such a payload is read for a few seconds; a stream
    # still running then is no hang.
    watching = watches(data)
    result = exchange(
        target.socket_path,
        chunks,
        pause_s=0.002 if spec.pause else 0.0,
        timeout=WATCH_READ_S if watching else EXCHANGE_TIMEOUT_S,
    )
    _check_alive(target, f"the payload {_describe(data)}")
    if watching and result.timed_out:
        result.data = result.data[: result.data.rfind(b"\0") + 1]  # a reply cut off by us
        if result.frames and result.frames[-1].endswith(b',"continues":true}'):
            result.timed_out = False
            result.closed = True
    try:
        found = check_exchange(data, result, MAX_MESSAGE_BYTES)
    except Violation as exc:
        target.stats.fail(exc.kind, f"{exc}\npayload: {_describe(data)}")
        raise
    for params in found:
        target.pool.learn(params)


def watches(payload: bytes) -> bool:
    """Whether a complete frame of `payload` is a Watch call with `more`."""
    return any(
        classify(frame, MAX_MESSAGE_BYTES) == (STREAM, "io.timelined.Timeline.Watch")
        for frame in payload.split(b"\0")[:-1]
        if b"Watch" in frame
    )


def send_and_vanish(target: FuzzTarget, spec: Payload, keep: float, read: int | None) -> None:
    """Send part of a payload and hang up (reset) without waiting: mid-frame, mid-burst, or
    after reading `read` bytes of the replies (mid-reply)."""
    data, chunks = render(spec, target.pool)
    cut = max(1, int(len(data) * keep))
    target.stats.trials += 1
    target.stats.frames += data[:cut].count(b"\0") + 1
    target.stats.bytes += cut
    if read is None:
        exchange(target.socket_path, [data[:cut]], half_close=False, timeout=EXCHANGE_TIMEOUT_S)
    else:
        exchange(target.socket_path, chunks, read_limit=read, timeout=EXCHANGE_TIMEOUT_S)
    _check_alive(target, f"hanging up on {_describe(data[:cut])}")


# --- campaigns ----------------------------------------------------------------------------------


def run_frames(target: FuzzTarget, examples: int, seed: int | None = None) -> None:
    """Random payloads: near-valid calls, garbage, deep nesting, huge strings, NULs inside,
    pipelined bursts, split across writes; every reply checked."""

    @_seeded(seed)
    @_fuzz_settings(examples, seed)
    @given(payloads(MAX_MESSAGE_BYTES, MAX_BLOCK_BYTES))
    def campaign(spec: Payload) -> None:
        send_and_check(target, spec)

    campaign()


def run_hangups(target: FuzzTarget, examples: int, seed: int | None = None) -> None:
    """Payloads cut short by a hang-up: mid-frame, or mid-reply after reading a few bytes."""

    @_seeded(seed)
    @_fuzz_settings(examples, seed)
    @given(
        payloads(MAX_MESSAGE_BYTES, MAX_BLOCK_BYTES),
        st.floats(0.0, 1.0),
        st.none() | st.integers(0, 4096),
    )
    def campaign(spec: Payload, keep: float, read: int | None) -> None:
        send_and_vanish(target, spec, keep, read)

    campaign()


def check_health(target: FuzzTarget, rss_margin_kib: int = RSS_MARGIN_KIB) -> dict[str, Any]:
    """After a campaign: alive, canary fine, memory and descriptors back near the start."""
    assert target.alive(), f"the daemon died:\n{target.log_tail()}"
    # Connections the fuzzer reset are closed by the daemon asynchronously: give it a moment.
    deadline = time.monotonic() + 10
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            status = _call(target.socket_path, "io.timelined.Admin.GetStatus", {})["status"]
        except VarlinkError as exc:  # every slot still held by connections being closed
            if not exc.name.endswith(".LimitExceeded") or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
            continue
        if status["connections"]["open"] <= 2:  # the canary and this call
            break
        time.sleep(0.1)
    assert status, "no connection slot came free within 10 s"
    rss = target.rss_kib()
    sockets = open_sockets(target.pid)
    facts = {
        "rss_start_kib": target.rss_start_kib,
        "rss_kib": rss,
        "sockets_start": target.sockets_start,
        "sockets": sockets,
        "connections_open": status.get("connections", {}).get("open"),
        "canary_calls": target.canary.calls,
        "canary_worst_s": round(target.canary.worst_s, 3),
    }
    problems = target.problems()
    assert not problems, "\n\n".join(problems)
    assert status["connections"]["open"] <= 2, f"connections left open: {facts}"
    assert sockets <= target.sockets_start + 2, f"sockets leaked: {facts}"
    assert rss <= target.rss_start_kib + rss_margin_kib, f"memory grew: {facts}"
    return facts


def report(line: str) -> None:
    """One line to the real terminal, past pytest's capture."""
    sys.__stdout__.write(f"\n{line}\n")
    sys.__stdout__.flush()
