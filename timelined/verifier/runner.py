"""One verification run: the state check and the chain check, combined into a report.

Blocking code, for a worker thread of the daemon or for the offline command. With
`processes=True` (the default) both checks run in two child processes (worker.py says why):
once the state child has its snapshot, the chain child walks the whole log while the state
child replays and compares.

The chain is walked to the log's end, in the daemon too: lines past the state's snapshot S are
batches written and not yet committed (or committed since), valid continuations of the chain;
an unfinished last line there is a batch being written (a note, not damage). When the log ends
before S:

- in the daemon, if S is also past the daemon's committed head, the state database claims
  more than the writer ever committed: it was changed behind the daemon's back (drift; the
  meta row's difference says so);
- otherwise records are missing from the log's end (or, offline, the state was changed, which
  nothing can tell apart): damage.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec

from timelined.api.verify import (
    ChainDamage,
    ChainResult,
    Mode,
    TreeResult,
    VerifyProgress,
    VerifyReport,
    VerifyState,
)
from timelined.auditlog.scan import scan_tail
from timelined.auditlog.source import FileLogSource
from timelined.ids import utc_now
from timelined.verifier.chain import chain_damage
from timelined.verifier.model import MAX_DIFFERENCES, StateResult
from timelined.verifier.protocol import (
    ChainDone,
    Failed,
    Message,
    PgDone,
    Progress,
    RebuildDone,
    Snapshot,
    StateDone,
    decode_message,
)
from timelined.verifier.reports import report_id
from timelined.verifier.tree import check_chain_and_tree

ProgressFn = Callable[[VerifyProgress], None]
PROCESS_THRESHOLD_BYTES = 8 << 20  # below this much log, a run is quicker in-process


def log_bytes(log_dir: Path) -> int:
    """The log's size: the sum of its segments' sizes."""
    figures = FileLogSource(log_dir).figures()
    return figures.stored_bytes if figures is not None else 0


class Cancelled(Exception):
    """The run was cancelled (the daemon is stopping); its children were killed."""


@dataclass(frozen=True, slots=True)
class Paths:
    """Where a run reads and where it may write scratch files."""

    state_db: Path
    log_dir: Path
    work_dir: Path
    tree_dir: Path | None = None  # the Merkle tree's level files; None: not checked

    @classmethod
    def of(cls, state_dir: Path, work_dir: Path | None = None) -> Paths:
        return cls(
            state_dir / "state.db",
            state_dir / "log",
            work_dir or state_dir / "tmp",
            state_dir / "tree",
        )


class _Child:
    """A worker process and the messages it has sent."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "timelined.verifier.worker", "--parent", str(os.getpid())]
        self.proc = subprocess.Popen(
            [*command, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            close_fds=True,
            env=None if env is None else {**os.environ, **env},
        )
        assert self.proc.stdout is not None
        self.stdout: IO[bytes] = self.proc.stdout
        self.buffer = b""
        self.final: Message | None = None
        self.eof = False

    def feed(self, data: bytes) -> list[Message]:
        if not data:
            self.eof = True
            return []
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        messages = []
        for line in lines:
            try:
                message = decode_message(line)
            except msgspec.DecodeError:
                message = Failed(f"unreadable message from the verifier's child: {line[:200]!r}")
            if isinstance(message, StateDone | ChainDone | RebuildDone | PgDone | Failed):
                self.final = message
            messages.append(message)
        return messages

    def kill(self) -> None:
        """Stop the child: SIGTERM lets it remove its scratch files; SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()
        self.stdout.close()

    def finish(self) -> Message:
        code = self.proc.wait()
        self.stdout.close()
        if self.final is None:
            return Failed(f"the verifier's child exited with status {code} before finishing")
        return self.final


def _pump(
    children: list[_Child],
    on_message: Callable[[_Child, Message], None],
    cancel: threading.Event | None,
    until: Callable[[], bool] | None = None,
) -> None:
    """Read the children's messages until every one reached EOF (or `until()` holds)."""
    with selectors.DefaultSelector() as sel:
        for child in children:
            if not child.eof:
                os.set_blocking(child.stdout.fileno(), False)
                sel.register(child.stdout, selectors.EVENT_READ, child)
        while sel.get_map():
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            for key, _ in sel.select(timeout=0.1):
                child = key.data
                assert isinstance(child, _Child)
                try:
                    data = os.read(child.stdout.fileno(), 1 << 16)
                except BlockingIOError:
                    continue
                for message in child.feed(data):
                    on_message(child, message)
                if child.eof:
                    sel.unregister(child.stdout)
                if until is not None and until():
                    return


def run_child(
    args: list[str],
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    env: dict[str, str] | None = None,
) -> Message:
    """Run one worker to its end (`env`: added to its environment); returns its final
    message."""
    child = _Child(args, env)
    try:

        def on_message(_child: _Child, message: Message) -> None:
            if isinstance(message, Progress) and progress is not None:
                progress(message.progress)

        _pump([child], on_message, cancel)
        return child.finish()
    finally:
        child.kill()


def verify_paths(
    paths: Paths,
    *,
    trigger: str,
    mode: Mode = "daemon",
    copy: bool = False,
    head: Callable[[], int] | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    processes: bool = True,
    cap: int = MAX_DIFFERENCES,
    tree_size: int | None = None,
) -> VerifyReport:
    """Run the checks and build the report (not written: see reports.write_report).

    The tree (when `paths.tree_dir` is set) is checked after the chain walk, in the same
    worker, up to `tree_size` leaves (None: as many as its files and the log hold)."""
    started_at = utc_now()
    started = time.perf_counter()
    heads: list[int] = []

    def on_snapshot(_seq: int) -> None:
        if head is not None:
            heads.append(head())  # the committed head as the snapshot was taken

    # A live log (the daemon's: `head` given) is walked to the head at the snapshot, not to its
    # end: past it the writer may be filling reserved space between two of the walk's reads,
    # and NULs read before the write glued to the line read after it look like damage.
    chain_upto = (lambda: heads[0] if heads else head()) if head is not None else None
    if processes:
        state, chain, tree, error = _run_children(
            paths, copy, cap, tree_size, on_snapshot, progress, cancel, chain_upto
        )
    else:
        state, chain, tree, error = _run_inline(
            paths, copy, cap, tree_size, on_snapshot, progress, chain_upto
        )
    seconds = time.perf_counter() - started
    return build_report(
        started_at=started_at,
        seconds=seconds,
        trigger=trigger,
        mode=mode,
        state=state,
        chain=chain,
        tree=tree,
        error=error,
        daemon_head=heads[0] if heads else None,
        log_dir=paths.log_dir,
    )


def _run_inline(
    paths: Paths,
    copy: bool,
    cap: int,
    tree_size: int | None,
    on_snapshot: Callable[[int], None],
    progress: ProgressFn | None,
    chain_upto: Callable[[], int] | None = None,
) -> tuple[StateResult | None, ChainResult | None, TreeResult | None, str | None]:
    from timelined.verifier.state import check_state

    state = check_state(
        paths.state_db,
        paths.log_dir,
        paths.work_dir,
        copy=copy,
        cap=cap,
        on_snapshot=lambda seq, _hash: on_snapshot(seq),
        progress=progress,
    )
    chain, tree = check_chain_and_tree(
        paths.log_dir,
        paths.tree_dir,
        upto_seq=chain_upto() if chain_upto is not None else None,
        tree_upto=tree_size,
    )
    return state, chain, tree if paths.tree_dir is not None else None, None


def _run_children(
    paths: Paths,
    copy: bool,
    cap: int,
    tree_size: int | None,
    on_snapshot: Callable[[int], None],
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    chain_upto: Callable[[], int] | None = None,
) -> tuple[StateResult | None, ChainResult | None, TreeResult | None, str | None]:
    state_args = [
        "state",
        "--state-db",
        str(paths.state_db),
        "--log-dir",
        str(paths.log_dir),
        "--work-dir",
        str(paths.work_dir),
        "--cap",
        str(cap),
    ] + (["--copy"] if copy else [])
    children: list[_Child] = []
    state_seen: list[bool] = []
    snapshot: list[int] = []

    def on_message(child: _Child, message: Message) -> None:
        if isinstance(message, Snapshot):
            on_snapshot(message.seq)
            snapshot.append(message.seq)
        elif isinstance(message, Progress) and progress is not None:
            # The state check decides the run's time: show the chain's progress only until
            # the state check has some of its own.
            if message.progress.phase != "chain":
                state_seen.append(True)
                progress(message.progress)
            elif not state_seen:
                progress(message.progress)

    try:
        state_child = _Child(state_args)
        children.append(state_child)
        # The chain child starts once the snapshot is taken: every record up to S is in the log
        # before S commits, so a walk that lists the segments after that reaches S.
        _pump(children, on_message, cancel, until=lambda: bool(snapshot))
        chain_args = ["chain", "--log-dir", str(paths.log_dir)]
        if chain_upto is not None:
            chain_args += ["--upto", str(chain_upto())]
        if paths.tree_dir is not None:
            chain_args += ["--tree-dir", str(paths.tree_dir)]
            if tree_size is not None:
                chain_args += ["--tree-upto", str(tree_size)]
        chain_child = _Child(chain_args)
        children.append(chain_child)
        _pump(children, on_message, cancel)
        state_msg = state_child.finish()
        chain_msg = chain_child.finish()
    finally:
        for child in children:
            child.kill()
    errors = []
    state = state_msg.result if isinstance(state_msg, StateDone) else None
    chain = chain_msg.result if isinstance(chain_msg, ChainDone) else None
    tree = chain_msg.tree if isinstance(chain_msg, ChainDone) else None
    for name, msg in (("state check", state_msg), ("chain check", chain_msg)):
        if isinstance(msg, Failed):
            errors.append(f"{name}: {msg.error}")
    return state, chain, tree, "; ".join(errors) or None


def build_report(
    *,
    started_at: str,
    seconds: float,
    trigger: str,
    mode: Mode,
    state: StateResult | None,
    chain: ChainResult | None,
    error: str | None,
    daemon_head: int | None,
    log_dir: Path | None = None,
    tree: TreeResult | None = None,
    log_table: bool = False,
) -> VerifyReport:
    """The report of a run from its checks' results (`log_table`: the log is PostgreSQL's
    table, where nothing is rolled forward at a boot: log and state commit together)."""
    notes: list[str] = []
    snapshot = state.snapshot_seq if state is not None else -1
    if chain is not None and state is not None:
        chain = _log_findings(chain, state, mode, daemon_head, notes, log_dir, log_table)
    verdict: VerifyState
    if chain is not None and not chain.ok:
        verdict = "damaged"
    elif state is None or chain is None:
        verdict = "failed"
    elif state.differences_total or (tree is not None and tree.state == "mismatch"):
        verdict = "drift"  # the tree, like the state database, is derived from the log
    else:
        verdict = "ok"
    checked = state.events_replayed if state is not None else 0
    report = VerifyReport(
        id=report_id(started_at),
        mode=mode,
        trigger=trigger,
        state=verdict,
        started_at=started_at,
        finished_at=utc_now(),
        seconds=round(seconds, 6),
        snapshot_seq=snapshot,
        log_head_seq=chain.head_seq if chain is not None else None,
        events_checked=checked,
        events_per_second=round(checked / seconds, 1) if seconds > 0 else 0.0,
        chain=chain,
        differences=state.differences if state is not None else [],
        differences_total=state.differences_total if state is not None else 0,
        search_index=state.search_index if state is not None else "",
        tree=tree,
        error=error if verdict == "failed" else None,
        notes=notes + ([f"also failed: {error}"] if error and verdict != "failed" else []),
    )
    report.summary = summarize(report)
    return report


def _log_findings(
    chain: ChainResult,
    state: StateResult,
    mode: Mode,
    daemon_head: int | None,
    notes: list[str],
    log_dir: Path | None = None,
    log_table: bool = False,
) -> ChainResult:
    """Fold what the state check learnt about the log into the chain result and notes."""
    snapshot = state.snapshot_seq
    seq = state.log_error_seq if state.log_error_seq is not None else state.replayed_seq + 1
    if chain.ok and state.log_error is not None and (chain.torn is None or seq < chain.torn.seq):
        # The chain walk checks hashes and links, not whether data fits its event type: a line
        # whose hash is right but whose data cannot be decoded is damage found by the replay.
        # A line in the torn tail is not such a line: the replay read the crash's bytes, and
        # the state being past them is "truncated" (below), as for any other torn tail.
        return msgspec.structs.replace(
            chain,
            ok=False,
            damage=ChainDamage(
                seq=seq, kind="bad data", segment=None, offset=None, detail=state.log_error
            ),
        )
    if chain.torn is not None:
        why = (
            "a batch being written"
            if mode == "daemon"
            else "not damage; the next boot cuts it into quarantine"
        )
        notes.append(
            f"the log ends with an unfinished line at seq {chain.torn.seq} ({chain.torn.segment}"
            f" offset {chain.torn.offset}, {chain.torn.length} bytes): {why}"
        )
    if not chain.ok or snapshot <= chain.head_seq:
        if chain.ok and 0 <= snapshot < chain.head_seq and mode == "offline" and not log_table:
            # Neither the walk nor the replay decoded the lines past the snapshot; the boot
            # will (scan_tail decodes past its anchor) and refuses a bad one as damage. Check
            # them the same way before promising that it rolls them forward.
            scan = scan_tail(log_dir, snapshot) if log_dir is not None else None
            damage = scan.damage if scan is not None else None
            if scan is not None and damage is not None:
                return msgspec.structs.replace(
                    chain,
                    ok=False,
                    damage=chain_damage(damage),
                    records=scan.last_seq,  # the good chain ends before the damage
                    head_seq=scan.last_seq,
                    head_hash=scan.last_hash,
                )
            notes.append(
                f"the log holds {chain.head_seq - snapshot} events past the state's last seq "
                f"{snapshot}; the daemon's next boot rolls them forward"
            )
        return chain
    if daemon_head is not None and snapshot > daemon_head and chain.head_seq >= daemon_head:
        notes.append(
            f"the state database claims seq {snapshot}, past the daemon's committed head "
            f"{daemon_head}: it was changed behind the daemon's back"
        )
        return chain
    return msgspec.structs.replace(
        chain,
        ok=False,
        damage=ChainDamage(
            seq=chain.head_seq + 1,
            kind="truncated",
            segment=None,
            offset=None,
            detail=f"the log ends at seq {chain.head_seq} but the state database is at seq "
            f"{snapshot}: records are missing from the log's end"
            + (", or the state database was changed" if daemon_head is None else ""),
        ),
    )


def summarize(report: VerifyReport) -> str:
    """One line saying what the run found."""
    if report.state == "ok":
        return (
            f"ok: the state database equals the replay of the log at seq {report.snapshot_seq}; "
            f"the chain is intact through seq {report.log_head_seq}"
            + (
                f"; the Merkle tree's {report.tree.size} leaves equal the log"
                if report.tree is not None and report.tree.state == "ok"
                else ""
            )
        )
    if report.state == "damaged" and report.chain is not None and report.chain.damage:
        d = report.chain.damage
        where = f" in {d.segment}" if d.segment else ""
        return f"damaged: the log's chain breaks at seq {d.seq}{where} ({d.kind}): {d.detail}"
    tree = report.tree
    if report.state == "drift" and tree is not None and tree.state == "mismatch":
        also = f"; and {report.differences_total} state difference(s)"
        return (
            f"drift: the Merkle tree differs from the log at leaf {tree.first_bad_leaf} "
            f"(level {tree.level}, node {tree.index}): {tree.detail}"
            + (also if report.differences_total else "")
        )
    if report.state == "drift":
        named = "; ".join(d.describe() for d in report.differences[:3])
        more = report.differences_total - min(3, len(report.differences))
        return (
            f"drift: {report.differences_total} difference(s) between the state database and "
            f"the log at seq {report.snapshot_seq}: {named}"
            + (f"; and {more} more" if more else "")
        )
    return f"{report.state}: {report.error or 'the verification could not run'}"
