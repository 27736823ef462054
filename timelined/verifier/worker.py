"""The verifier's child processes: `python -m timelined.verifier.worker state|chain|rebuild|pg …`.

Why processes, not threads: replaying and hashing are CPU-bound Python. In a thread of the
daemon they would hold the GIL for most of a run, and the writer thread (which hops in and out
of the GIL around every SQLite call of a batch) would wait up to the 5 ms switch interval at
each hop: append latency would climb during every verification. A child process has its own
GIL, runs at a lower priority (nice 10, where the sandbox allows it), and its memory goes away
with it. The state and chain checks run in two children at once, on two cores.

Each child writes JSON lines to stdout (protocol.py): progress, then one final message.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import signal
import sys
import time
from pathlib import Path

from timelined.api.verify import VerifyProgress
from timelined.errors import LogDamaged
from timelined.verifier.protocol import (
    ChainDone,
    Failed,
    Message,
    PgDone,
    Progress,
    RebuildDone,
    Snapshot,
    StateDone,
    encode_message,
)
from timelined.verifier.tree import check_chain_and_tree

_PR_SET_PDEATHSIG = 1


def _emit(message: Message) -> None:
    sys.stdout.buffer.write(encode_message(message) + b"\n")
    sys.stdout.buffer.flush()


def _settle(parent: int | None) -> None:
    """Low priority; die with the daemon; fewer garbage-collector passes (records are acyclic)."""
    try:
        # SCHED_IDLE: any normal task waking up (the daemon's writer and event loop) preempts
        # this one at once; nice 10 only weighs the shares, and append p99 rose 1.5-1.7x during
        # a run with it (docs/performance.md, pass 3).
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        try:
            os.nice(10)
        except OSError:
            pass  # a sandbox may refuse both (systemd's ~@resources): run at normal priority
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if parent is not None and os.getppid() != parent:
        sys.exit(3)  # the parent died before PDEATHSIG was armed
    # Stopped by the parent (a cancelled run): unwind, so that scratch files are removed.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(128 + signal.SIGTERM))
    # The daemon blocks its stop signals while serving (daemon/signals.py) and a child inherits
    # the mask: unblock them, after the handler is in place so that one already pending is
    # handled, or a stop (the parent's SIGTERM, systemd's to the cgroup) would wait for SIGKILL.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    gc.freeze()
    gc.set_threshold(100_000, 50, 50)


class _Throttle:
    """Emit progress at most every `interval` seconds (and always the last step)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.last = 0.0

    def __call__(self, progress: VerifyProgress) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval or progress.done >= progress.total:
            self.last = now
            _emit(Progress(progress))


def _state(args: argparse.Namespace) -> None:
    from timelined.verifier.state import check_state

    result = check_state(
        Path(args.state_db),
        Path(args.log_dir),
        Path(args.work_dir),
        copy=args.copy,
        cap=args.cap,
        on_snapshot=lambda seq, digest: _emit(Snapshot(seq, digest)),
        progress=_Throttle(),
    )
    _emit(StateDone(result))


def _chain(args: argparse.Namespace) -> None:
    upto = args.upto if args.upto is not None and args.upto >= 0 else None
    throttle = _Throttle()
    total = upto or 0
    log_dir = Path(args.log_dir)
    tree_dir = Path(args.tree_dir) if args.tree_dir is not None else None
    result, tree = check_chain_and_tree(
        log_dir,
        tree_dir,
        upto_seq=upto,
        tree_upto=args.tree_upto,
        progress=lambda seq, _bytes: throttle(VerifyProgress("chain", seq, max(total, seq))),
    )
    _emit(ChainDone(result, tree if tree_dir is not None else None))


def _rebuild(args: argparse.Namespace) -> None:
    from timelined.state.replay import rebuild

    throttle = _Throttle()
    result = rebuild(
        Path(args.log_dir),
        Path(args.out),
        upto_seq=args.upto,
        progress=lambda done, seq: throttle(VerifyProgress("rebuild", seq, args.upto)),
    )
    _emit(RebuildDone(result.applied, result.last_seq, result.last_hash, result.seconds))


def _pg(args: argparse.Namespace) -> None:
    from timelined.verifier.pgrun import DSN_ENV, PgTarget, verify_pg

    # The password, if any, is libpq's PGPASSWORD in this environment (PgTarget.child_env).
    target = PgTarget(os.environ[DSN_ENV])
    report = verify_pg(
        target.connect,
        Path(args.work_dir),
        trigger=args.trigger,
        progress=_Throttle(),
        cap=args.cap,
        tree_dir=Path(args.tree_dir) if args.tree_dir is not None else None,
        tree_size=args.tree_upto,
    )
    _emit(PgDone(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m timelined.verifier.worker")
    parser.add_argument("--parent", type=int, default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    state = sub.add_parser("state")
    state.add_argument("--state-db", required=True)
    state.add_argument("--log-dir", required=True)
    state.add_argument("--work-dir", required=True)
    state.add_argument("--copy", action="store_true")
    state.add_argument("--cap", type=int, default=1000)
    chain = sub.add_parser("chain")
    chain.add_argument("--log-dir", required=True)
    chain.add_argument("--upto", type=int, default=None)
    chain.add_argument("--tree-dir", default=None)
    chain.add_argument("--tree-upto", type=int, default=None)
    rebuild = sub.add_parser("rebuild")
    rebuild.add_argument("--log-dir", required=True)
    rebuild.add_argument("--out", required=True)
    rebuild.add_argument("--upto", type=int, required=True)
    pg = sub.add_parser("pg")  # the store: $TIMELINED_PG_DSN (pgrun.PgTarget.child_env)
    pg.add_argument("--work-dir", required=True)
    pg.add_argument("--trigger", required=True)
    pg.add_argument("--cap", type=int, default=1000)
    pg.add_argument("--tree-dir", default=None)
    pg.add_argument("--tree-upto", type=int, default=None)
    args = parser.parse_args(argv)
    _settle(args.parent)
    run = {"state": _state, "chain": _chain, "rebuild": _rebuild, "pg": _pg}[args.command]
    try:
        run(args)
    except LogDamaged as exc:
        _emit(Failed(exc.message, exc.params.get("seq")))
        return 1
    except Exception as exc:
        _emit(Failed(f"{type(exc).__name__}: {exc}"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
