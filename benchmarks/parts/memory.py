"""Peak RSS of the daemon (VmHWM) at 10k and 1M events, through a realistic life.

The daemon starts on the cached history with the default `verify.on_boot = true`; the
benchmark waits for that verification to end (when the verifier exists), then 8 connections
append for one window, then one client runs every kind of read (pages, histories, searches);
VmHWM, the high-water mark of the resident set since the process started, is read from
/proc/PID/status before the clean stop.
"""

from __future__ import annotations

import random
import time
from typing import Any

from benchmarks.daemon import Daemon, write_config
from benchmarks.dataset import TextGen, dataset
from benchmarks.env import Env
from benchmarks.loadgen import Load
from benchmarks.parts.verify import verifier_available
from benchmarks.report import Target
from benchmarks.wire import TIMELINE, WireClient

PART = "memory"


def wait_verified(daemon: Daemon, timeout: float) -> str:
    """Wait for the boot verification to end; returns the verify state seen last."""
    if not verifier_available():
        return "none: the verifier is not in this build"
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    state = "unknown"
    while time.monotonic() < deadline:
        verify: dict[str, Any] = daemon.status().get("verify") or {}
        state = str(verify.get("state", "unknown"))
        if state in ("ok", "drift", "damaged"):
            return state
        if state == "never" and time.monotonic() - started > 3:
            return "never (no verification ran)"
        time.sleep(0.2)
    return f"{state} (still, after {timeout:.0f} s)"


def reads(daemon: Daemon, info: dict[str, Any], count: int) -> None:
    rng = random.Random(1)
    gen = TextGen(seed=2)
    roots = info["sample_roots"]
    with WireClient(daemon.socket_path) as c:
        for _ in range(count):
            _, ctx, own = rng.choice(roots)
            c.call(
                f"{TIMELINE}.ListBlocks",
                {"context_id": ctx, "after": rng.randrange(max(1, own)), "limit": 100},
            )
            c.call(f"{TIMELINE}.GetHistory", {"context_id": ctx, "limit": 100})
            c.call(f"{TIMELINE}.SearchBlocks", {"query": gen.word(0, 4000)})


def run(env: Env) -> None:
    res = env.results
    for n in (env.small, env.big):
        ds = dataset(env.cache, n)
        config = write_config(env.scratch(f"mem{n}"), verify_on_boot=True)
        ds.install(config, clean=True)
        with Daemon(config) as daemon:
            daemon.start()
            after_boot = daemon.vm_hwm_mib()
            verified = wait_verified(daemon, 60 if env.quick else 900)
            after_verify = daemon.vm_hwm_mib()
            Load(str(daemon.socket_path), 8, env.window_s).run()
            after_load = daemon.vm_hwm_mib()
            reads(daemon, ds.info, 50 if env.quick else 300)
            peak = daemon.vm_hwm_mib()
            daemon.stop()
        res.add(
            PART,
            f"peak RSS (VmHWM) at {env.label(n)} events",
            peak,
            "MiB",
            target=Target("<=", 150, "issue 8") if n == env.big else None,
            detail={
                "after_boot_mib": after_boot,
                "after_verify_mib": after_verify,
                "after_load_mib": after_load,
                "verify": verified,
            },
            note=f"after boot {after_boot:.0f}, after boot verification ({verified}) "
            f"{after_verify:.0f}, after 8-conn appends {after_load:.0f} MiB",
        )
