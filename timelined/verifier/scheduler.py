"""The daemon's background verifier: when runs happen, one at a time, and what they report.

Runs happen:

- once after boot (`verify.on_boot`), in the background: the daemon starts `run_forever` after
  READY;
- every `verify.interval_s` seconds (0: never);
- on request (`verify()`, Admin.Verify);
- at once (debounced 200 ms) when someone else changes the files: inotify (inotify.py) watches
  the log and state directories for the events an outside change raises (a close after
  writing, a create, a rename, a removal, a chmod) and never IN_MODIFY, the only event the
  writer's own appends and commits raise (it keeps its files open): the kernel filters the
  daemon's writes out, so they cost no wake-up. A segment an event names is judged by
  watch.py (the writer's own rotations are accepted); a close after writing the segment the
  writer appends to starts a run even when its size is one the writer could have written (an
  edit in place: the writer never closes that segment while it is current); an event on
  state.db or its WAL makes the verifier ask the engine whether `PRAGMA data_version` moved on
  the write connection, which happens only when another connection committed;
- within a second when a process writes without closing: every second, every segment is
  compared with what the writer says it wrote (watch.py's sweep) and the data version is polled.

Requests coalesce: one run at a time; any number of requests during a run make one more run
after it. `verify(wait=True)` returns the report of a run that started after the request.

Each run's work happens in child processes (worker.py), driven from a worker thread, so the
event loop and the writer keep their GIL and their cores; a log under 8 MiB is verified in the
worker thread itself, where a run takes milliseconds and a process start would dominate.
Settings are read from `engine.config.verify` at each use, so a reload applies them.

On PostgreSQL (`pg=PgTarget(dsn, password)`) a run is `pgrun.verify_pg` in a child process
(worker.py `pg`, the store in its environment; this daemon's tree checked against the log
table, as the chain) and a repair `pgrepair.repair_pg_state`; there
are no files to watch (the log table's triggers refuse changes; the interval and requests
remain).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Protocol, TypeVar

import anyio

from timelined.api.verify import (
    ChainDamage,
    RepairResult,
    StatusState,
    VerifyProgress,
    VerifyReport,
    VerifyState,
    VerifyStatus,
)
from timelined.auditlog.segments import parse_segment_name
from timelined.auditlog.writer import WriterStats
from timelined.config import VerifyConfig
from timelined.errors import LogDamaged
from timelined.ids import utc_now
from timelined.recovery.damage import record_damage
from timelined.verifier.inotify import (
    IN_CLOSE_WRITE,
    IN_IGNORED,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    OUTSIDE_CHANGES,
    Inotify,
)
from timelined.verifier.pgrun import PgTarget
from timelined.verifier.protocol import Failed, PgDone
from timelined.verifier.repair import repair_state
from timelined.verifier.reports import latest_report, prune_reports, report_id, write_report
from timelined.verifier.runner import (
    PROCESS_THRESHOLD_BYTES,
    Cancelled,
    Paths,
    log_bytes,
    run_child,
    summarize,
    verify_paths,
)
from timelined.verifier.watch import LogWatch

if TYPE_CHECKING:
    from timelined.config import Config
    from timelined.writer.engine import Engine

log = logging.getLogger("timelined.verifier")
T = TypeVar("T")

DEBOUNCE_S = 0.2
DATA_VERSION_POLL_S = 1.0
SWEEP_S = 1.0  # how often every segment is compared with what the writer says it wrote
WATCH_SETTLE_S = 0.05
_STATE_FILES = frozenset({"state.db", "state.db-wal"})


class TreeKeeper(Protocol):
    """The daemon's Merkle tree, as the verifier uses it (treestore.service.Transparency)."""

    def flushed_size(self) -> int: ...

    def mark_for_rebuild(self) -> None: ...

    async def rebuild(self) -> int: ...


class Verifier:
    """Owned by the daemon: `run_forever` in its task group; the rest from Admin methods."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        publish: Callable[[str], None] | None = None,
        *,
        processes: bool | None = None,
        tree: TreeKeeper | None = None,
        pg: PgTarget | None = None,
    ) -> None:
        self._engine = engine
        self._pg = pg  # the PostgreSQL store; None: the files
        self._tree = tree  # None: no tree kept, none checked
        self._publish = publish
        self._processes = processes
        self._state_dir = config.state_dir
        paths = Paths.of(config.state_dir)
        self._paths = paths if tree is not None else dataclasses.replace(paths, tree_dir=None)
        self._reports_dir = config.reports_dir
        self._lock = anyio.Lock()  # one run or repair at a time
        self._requested = 0  # requests so far
        self._completed = 0  # requests answered by a finished run
        self._trigger: str | None = None  # the first trigger since the last run started
        self._not_before = 0.0
        self._wakeup = anyio.Event()
        self._finished = anyio.Event()
        self._serving = False  # run_forever is running
        self._running = False
        self._progress: VerifyProgress | None = None
        self._latest: VerifyReport | None = latest_report(config.reports_dir)
        self._last_state: VerifyState | None = None  # of a run since this daemon started
        self._runs = self._drift_runs = self._damaged_runs = self._repairs = 0
        self._last_repair_at: str | None = None
        self._poke_data_version = anyio.Event()
        self._logwatch = LogWatch(config.log_dir, self._writer_stats)
        self._watch_lock = anyio.Lock()
        self._watch_wakeups = 0  # inotify wake-ups: none from the daemon's own writes

    # --- the API the daemon uses -----------------------------------------------------------------

    async def run_forever(self, stopping: anyio.Event | None = None) -> None:
        """Run until cancelled: the boot run, the interval, requests, the file watchers.

        `stopping`, set when the daemon begins to stop, ends the file watching (the inotify
        watch and the segment sweep) before the rest is cancelled.
        """
        self._serving = True
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._runner)
                if self._pg is None:
                    tg.start_soon(self._watch_files, stopping)
                    tg.start_soon(self._poll_data_version)
                tg.start_soon(self._every_interval)
                if self._settings.on_boot:
                    self._request("boot")
        finally:
            self._serving = False

    async def verify(self, wait: bool = True) -> VerifyReport | None:
        """Request a run; with `wait`, the report of a run that started after this request.

        Without `run_forever` running, `wait=True` runs the verification in this task and
        `wait=False` only records the request.
        """
        wanted = self._request("request")
        if not wait:
            return None
        while self._completed < wanted:
            if self._serving:
                finished = self._finished
                if self._completed >= wanted:
                    break
                await finished.wait()
            else:
                await self._execute()
        return self._latest

    def status(self) -> VerifyStatus:
        """The verifier's part of GetStatus (cheap: no I/O)."""
        latest = self._latest
        state: StatusState = "running" if self._running else (self._last_state or "never")
        return VerifyStatus(
            state=state,
            last_state=self._last_state,
            last_run_at=latest.finished_at if latest is not None else None,
            last_report_id=latest.id if latest is not None else None,
            snapshot_seq=latest.snapshot_seq if latest is not None else None,
            events_checked=latest.events_checked if latest is not None else 0,
            differences=latest.differences_total if latest is not None else 0,
            tree=latest.tree.state if latest is not None and latest.tree is not None else None,
            runs=self._runs,
            drift_runs=self._drift_runs,
            damaged_runs=self._damaged_runs,
            repairs=self._repairs,
            last_repair_at=self._last_repair_at,
            watch_wakeups=self._watch_wakeups,
            progress=self._progress if self._running else None,
        )

    def latest(self) -> VerifyReport | None:
        """The newest report (from an earlier daemon, too, until this one finishes a run)."""
        return self._latest

    async def repair(self) -> RepairResult:
        """Rebuild the state from the log and swap it in; a verification run follows."""
        async with self._lock:
            result = await self._repair("requested")
        self._request("repair")
        return result

    # --- scheduling ----------------------------------------------------------------------------

    @property
    def _settings(self) -> VerifyConfig:
        return self._engine.config.verify

    def _request(self, trigger: str, *, debounce: bool = False) -> int:
        self._requested += 1
        if self._trigger is None:
            self._trigger = trigger
        if debounce:
            self._not_before = max(self._not_before, anyio.current_time() + DEBOUNCE_S)
        self._wakeup.set()
        return self._requested

    async def _runner(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            while True:  # debounced triggers: later ones may push the start back
                delay = self._not_before - anyio.current_time()
                if delay <= 0:
                    break
                await anyio.sleep(delay)
            try:
                await self._execute()
            except Exception:
                log.exception("the verifier failed; it keeps running")

    async def _every_interval(self) -> None:
        while True:
            interval = self._settings.interval_s
            if interval <= 0:
                await anyio.sleep(60)  # a reload may turn it on
                continue
            await anyio.sleep(interval)
            if self._settings.interval_s > 0:
                self._request("interval")

    async def _execute(self) -> None:
        """One run, if any request is not answered yet; then the drift action."""
        async with self._lock:
            target = self._requested
            if self._completed >= target:
                return
            trigger = self._trigger or "request"
            self._trigger = None
            self._not_before = 0.0
            try:
                report = await self._run(trigger)
            finally:
                self._completed = target
                finished, self._finished = self._finished, anyio.Event()
                finished.set()
            if report.state == "drift" and self._settings.on_drift == "repair":
                try:
                    await self._repair("verification found drift")
                except Exception:
                    log.exception("the automatic repair after drift failed")
                    return
                self._request("repair")

    async def _run(self, trigger: str) -> VerifyReport:
        self._running = True
        self._progress = None
        self._say(f"serving; verifying chain and state up to seq {self._engine.last_seq}")
        try:
            try:
                # Its hashes written out on the loop; the check reads them in the worker.
                tree_size = self._tree.flushed_size() if self._tree is not None else None
                report = await self._in_thread(partial(self._verify_sync, trigger, tree_size))
            except Cancelled:
                raise
            except Exception as exc:
                log.exception("a verification run failed")
                report = _failed_report(trigger, f"{type(exc).__name__}: {exc}")
            await anyio.to_thread.run_sync(self._save, report)
        finally:
            self._running = False
            self._progress = None
        self._record(report)
        return report

    def _verify_sync(
        self, trigger: str, tree_size: int | None, cancel: threading.Event
    ) -> VerifyReport:
        self._clean_scratch()
        if self._pg is not None:
            return self._verify_pg(trigger, self._pg, cancel, tree_size)
        return verify_paths(
            self._paths,
            trigger=trigger,
            head=lambda: self._engine.last_seq,
            progress=self._on_progress,
            cancel=cancel,
            processes=self._use_processes(),
            tree_size=tree_size,
        )

    def _verify_pg(
        self, trigger: str, pg: PgTarget, cancel: threading.Event, tree_size: int | None
    ) -> VerifyReport:
        """A run on PostgreSQL: in a child process (its replay is the same CPU-bound Python as
        on SQLite), unless processes are turned off; a store's size is not known beforehand.
        This daemon's own tree is checked against the log table after the chain."""
        work_dir, tree_dir = self._paths.work_dir, self._paths.tree_dir
        if self._processes is False:
            from timelined.verifier.pgrun import verify_pg

            return verify_pg(
                pg.connect,
                work_dir,
                trigger=trigger,
                progress=self._on_progress,
                cancel=cancel,
                tree_dir=tree_dir,
                tree_size=tree_size,
            )
        args = ["pg", "--work-dir", str(work_dir), "--trigger", trigger]
        if tree_dir is not None:
            args += ["--tree-dir", str(tree_dir)]
            if tree_size is not None:
                args += ["--tree-upto", str(tree_size)]
        outcome = run_child(args, self._on_progress, cancel, env=pg.child_env())
        if isinstance(outcome, PgDone):
            return outcome.report
        error = outcome.error if isinstance(outcome, Failed) else "no report from the child"
        return _failed_report(trigger, f"the verifier's child failed: {error}")

    def _clean_scratch(self) -> None:
        """Remove scratch files a killed run or repair left in STATE_DIR/tmp (called with the
        run lock held: no other run or repair is using the directory)."""
        work = self._paths.work_dir
        if work.is_dir():
            names = ("verify-*.db*", "state-*.db*", "repair-*.db*", "pgstate-*.db*")
            for leftover in [path for name in names for path in work.glob(name)]:
                leftover.unlink(missing_ok=True)

    def _save(self, report: VerifyReport) -> None:
        try:
            write_report(self._reports_dir, report)
            prune_reports(self._reports_dir)
        except OSError as exc:
            log.error("could not write the verification report %s: %s", report.id, exc)

    def _record(self, report: VerifyReport) -> None:
        self._latest = report
        self._last_state = report.state
        self._runs += 1
        where = report.path or report.id
        if report.state == "ok":
            log.info(
                "verification ok at seq %d: %d events in %.2f s (%.0f events/s)",
                report.snapshot_seq,
                report.events_checked,
                report.seconds,
                report.events_per_second,
            )
            self._say_serving()
        elif report.state == "drift":
            self._drift_runs += 1
            tree = report.tree
            if tree is not None and tree.state == "mismatch":
                log.warning("%s; report %s", report.summary, where)
                if self._tree is not None:
                    try:
                        self._tree.mark_for_rebuild()
                    except OSError as exc:
                        log.error("could not mark the Merkle tree for a rebuild: %s", exc)
                if not report.differences_total:
                    self._say(
                        f"serving; MERKLE TREE MISMATCH at leaf {tree.first_bad_leaf}, "
                        f"see report {report.id}"
                    )
                    return
            named = "; ".join(d.describe() for d in report.differences[:10])
            more = report.differences_total - min(10, len(report.differences))
            log.warning(
                "state drift at seq %d: %d difference(s): %s%s; report %s",
                report.snapshot_seq,
                report.differences_total,
                named,
                f"; and {more} more" if more > 0 else "",
                where,
            )
            self._say(
                f"serving; DRIFT FOUND: {report.differences_total} differences, "
                f"see report {report.id}"
            )
        elif report.state == "damaged":
            self._damaged_runs += 1
            log.error("%s; report %s", report.summary, where)
            damage = report.chain.damage if report.chain is not None else None
            at = f" at seq {damage.seq} ({damage.kind})" if damage is not None else ""
            if damage is not None and self._engine.read_only is None:
                self._degrade(report, damage)
            self._say(f"serving; LOG DAMAGED{at}, see report {report.id}")
        else:
            log.error("verification failed: %s; report %s", report.error, where)
            self._say(f"serving; verification failed, see report {report.id}")

    def _degrade(self, report: VerifyReport, damage: ChainDamage) -> None:
        """The same damage found at boot starts the daemon read-only: so does this, and the
        record makes the next boots check the whole chain (recovery/damage.py)."""
        if damage.seq > report.snapshot_seq:
            # Past what the state had committed when the run began: bytes the writer may be
            # rewriting right now (a batch refused for a full disk is truncated back and the next
            # one written over it). Not history yet: look again instead of refusing writes.
            log.warning("damage past the snapshot (seq %d): verifying again", damage.seq)
            self._request("recheck", debounce=True)
            return
        reason = f"{damage.kind} ({damage.detail}), found by the verifier, report {report.id}"
        self._engine.degrade(LogDamaged(damage.seq, reason, damage.segment))
        log.critical(
            "the audit log is damaged at seq %d: writes are refused from now on", damage.seq
        )
        try:
            record_damage(self._engine.config.damage_path, damage.seq, reason, damage.segment)
        except OSError as exc:
            log.error("could not record the damage for the next boot: %s", exc)

    async def _repair(self, reason: str) -> RepairResult:
        """Repair with the run lock held."""
        self._say("serving; repairing the state database from the log")
        try:
            result = await self._repair_store(reason)
            tree = self._latest.tree if self._latest is not None else None
            if self._tree is not None and tree is not None and tree.state == "mismatch":
                await self._tree.rebuild()
        except BaseException:
            self._say("serving; repair failed, see the journal")
            raise
        self._repairs += 1
        self._last_repair_at = result.finished_at
        self._say_serving()
        return result

    async def _repair_store(self, reason: str) -> RepairResult:
        if self._pg is not None:
            from timelined.verifier.pgrepair import Rebuilt, repair_pg_state

            async def in_thread(work: Callable[[], Rebuilt]) -> Rebuilt:
                return await self._in_thread(lambda _cancel: work())

            return await repair_pg_state(
                self._engine,
                self._pg.connect,
                self._reports_dir,
                reason=reason,
                in_thread=in_thread,
            )
        return await repair_state(
            self._engine.config,
            self._engine,
            reason=reason,
            in_thread=self._in_thread,
            processes=self._use_processes(),
        )

    def _use_processes(self) -> bool:
        """Child processes, unless the log is small enough that their start-up would dominate
        (a run over a few thousand events takes milliseconds: the GIL is not held for long)."""
        if self._processes is not None:
            return self._processes
        return log_bytes(self._paths.log_dir) >= PROCESS_THRESHOLD_BYTES

    def _on_progress(self, progress: VerifyProgress) -> None:
        self._progress = progress  # from the worker thread: one reference assignment

    def _say_serving(self) -> None:
        """The daemon's own serving line (daemon.notify.StatusText.serving), all being well."""
        config = self._engine.config
        self._say(f"serving on {config.socket_path}, log at seq {self._engine.last_seq}")

    def _say(self, text: str) -> None:
        damaged = self._engine.read_only
        if damaged is not None:  # a read-only daemon says so first, whatever else it does
            text = f"degraded (reads only): {damaged.message}; {text}"
        if self._publish is not None:
            try:
                self._publish(text)
            except Exception:
                log.exception("publishing the verifier's status failed")

    async def _in_thread(self, fn: Callable[[threading.Event], T]) -> T:
        """Run blocking work in a worker thread; on cancellation, stop it and wait for it."""
        cancel = threading.Event()
        done = threading.Event()

        def work() -> T:
            try:
                return fn(cancel)
            finally:
                done.set()

        try:
            return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            cancel.set()
            with anyio.CancelScope(shield=True):
                # The work notices `cancel` within 0.1 s and kills its child processes.
                await anyio.to_thread.run_sync(done.wait, 10.0)
            raise

    # --- watching ------------------------------------------------------------------------------

    def _writer_stats(self) -> WriterStats | None:
        writer = self._engine.writer
        return writer.stats() if writer is not None else None

    async def _watch_files(self, stopping: anyio.Event | None) -> None:
        """The inotify watch and the once-a-second sweep until `stopping` (if given) is set."""
        self._paths.log_dir.mkdir(parents=True, exist_ok=True)
        await self._in_watch_thread(self._logwatch.baseline)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._sweep_segments)
            tg.start_soon(self._watch_events)
            if stopping is not None:
                await stopping.wait()
                tg.cancel_scope.cancel()

    async def _watch_events(self) -> None:
        """Without inotify (another system, no instances left) the sweep, the data_version poll
        and the interval runs remain, so a failure here is logged, not fatal to the daemon."""
        try:
            inotify = Inotify.open()
        except OSError as exc:
            log.warning(
                "no inotify (%s): changes to the log and the state are found by the checks "
                "every %g s only",
                exc,
                SWEEP_S,
            )
            return
        try:
            await self._watch_events_unguarded(inotify)
        except Exception:
            log.exception("watching %s failed; changes are found by polling only", self._state_dir)
        finally:
            inotify.close()

    async def _watch_events_unguarded(self, inotify: Inotify) -> None:
        log_wd = inotify.add_watch(self._paths.log_dir, OUTSIDE_CHANGES | IN_ONLYDIR)
        state_wd = inotify.add_watch(self._state_dir, OUTSIDE_CHANGES | IN_ONLYDIR)
        while True:
            await anyio.wait_readable(inotify.fileno())
            self._watch_wakeups += 1
            await anyio.sleep(WATCH_SETTLE_S)  # an editor's several events, read together
            events = inotify.read()
            log.debug("file events: %s", ", ".join(f"{e.name or '.'} {e.mask:#x}" for e in events))
            if any(e.wd == state_wd and e.name in _STATE_FILES for e in events):
                self._poke_data_version.set()  # state.db or its WAL: ask the write connection
            segments = {
                e.name for e in events if e.wd == log_wd and parse_segment_name(e.name) is not None
            }
            closed = {e.name for e in events if e.name in segments and e.mask & IN_CLOSE_WRITE}
            lost = any(e.mask & (IN_Q_OVERFLOW | IN_IGNORED) for e in events)
            if lost:  # events dropped, or the log directory itself went away: look at all
                self._poke_data_version.set()
                self._on_foreign(await self._in_watch_thread(self._logwatch.sweep))
            if segments:
                found = await self._in_watch_thread(self._logwatch.check, segments)
                self._on_foreign(found)
                if closed and not found:
                    self._on_closed_after_writing(closed)

    async def _sweep_segments(self) -> None:
        """A process that keeps a segment open and writes raises no event the writer's own
        appends do not: every segment's size, inode and mtime are compared once a second."""
        while True:
            await anyio.sleep(SWEEP_S)
            try:
                found = await self._in_watch_thread(self._logwatch.sweep)
            except OSError as exc:
                log.warning("the check of the log's segments failed: %s", exc)
                continue
            self._on_foreign(found)

    async def _in_watch_thread(self, fn: Callable[..., T], *args: object) -> T:
        """LogWatch in a worker thread, one call at a time (it is not thread-safe)."""
        async with self._watch_lock:
            return await anyio.to_thread.run_sync(fn, *args)

    def _on_foreign(self, found: list[tuple[str, str]]) -> None:
        if found:
            log.warning(
                "the audit log changed under the daemon: %s",
                "; ".join(problem for _name, problem in found),
            )
            self._request(f"watch:log/{found[0][0]}", debounce=True)

    def _on_closed_after_writing(self, closed: set[str]) -> None:
        """The segment the writer appends to, written and closed by another process: the writer
        keeps it open until it rotates past it (and then the segment is no longer current), so
        the close is someone else's. Its size may still be one the writer could have written (an
        edit in place, `dd conv=notrunc`), which LogWatch cannot tell from an append: verify."""
        stats = self._writer_stats()
        current = stats.segment if stats is not None else None
        if current is not None and current in closed:
            log.warning(
                "%s, the segment the writer appends to, was opened for writing and closed by "
                "another process; verifying the log",
                current,
            )
            self._request(f"watch:log/{current}", debounce=True)

    async def _poll_data_version(self) -> None:
        while True:
            with anyio.move_on_after(DATA_VERSION_POLL_S):
                await self._poke_data_version.wait()
            self._poke_data_version = anyio.Event()
            try:
                changed = await self._engine.data_version_changed()
            except Exception as exc:  # the engine closed or failed: nothing left to watch
                log.debug("data_version poll stopped: %s", exc)
                return
            if changed:
                log.warning("another process wrote the state database; verifying it")
                self._request("data_version", debounce=True)


def _failed_report(trigger: str, error: str) -> VerifyReport:
    now = utc_now()
    report = VerifyReport(
        id=report_id(now),
        trigger=trigger,
        state="failed",
        started_at=now,
        finished_at=now,
        seconds=0.0,
        snapshot_seq=-1,
        events_checked=0,
        events_per_second=0.0,
        error=error,
    )
    report.summary = summarize(report)
    return report
