"""Administration verbs: status, log, recovery-report, reports, verify, repair, reload,
metrics."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import msgspec

from timelined.api import LogStatus, ReadLogReply
from timelined.api.verify import Difference
from timelined.auditlog.atomic import write_file_atomic
from timelined.ctl.common import ADMIN, Ctl, Verbs, count, positive
from timelined.ctl.output import escape
from timelined.ctl.report_text import render_summary


def register(verbs: Verbs) -> None:
    p = verbs.add_parser("status", help="the daemon's status")
    p.set_defaults(run=status)

    p = verbs.add_parser("log", help="raw audit-log events, exactly as in the log (JSON lines)")
    p.add_argument("--after-seq", type=count, default=0, metavar="SEQ")
    p.add_argument("--limit", type=positive, help="events per page (1..1000, default 100)")
    p.add_argument("--all", action="store_true", help="every page up to the log's head")
    p.set_defaults(run=log)

    p = verbs.add_parser(
        "recovery-report", help="a report in words (default: the latest crash-recovery report)"
    )
    p.add_argument("id", nargs="?")
    p.set_defaults(run=recovery_report)

    p = verbs.add_parser("reports", help="boot, recovery, repair and verify reports, newest first")
    p.add_argument("--limit", type=positive)
    p.add_argument("--kind", choices=["boot", "recovery", "repair", "verify"])
    p.set_defaults(run=reports)

    p = verbs.add_parser("verify", help="verify the log and the state (start a run, or --wait)")
    p.add_argument("--wait", action="store_true", help="wait for the result (exit 1 on drift)")
    p.set_defaults(run=verify)

    p = verbs.add_parser("verify-report", help="the latest verification report")
    p.set_defaults(run=verify_report)

    p = verbs.add_parser("repair", help="rebuild the state from the log and swap it in")
    p.set_defaults(run=repair)

    p = verbs.add_parser("reload", help="re-read config.toml and apply what can change")
    p.set_defaults(run=reload)

    p = verbs.add_parser("metrics", help="the daemon's metrics (Prometheus text format)")
    p.add_argument(
        "--textfile",
        metavar="PATH",
        help="write them atomically to PATH (for node_exporter's textfile collector: a *.prom "
        "file in its --collector.textfile.directory), e.g. from a systemd timer",
    )
    p.set_defaults(run=metrics)


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{s}s")
    return " ".join(parts)


def _inline(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    return ", ".join(f"{k}={v}" for k, v in d.items() if not isinstance(v, dict | list))


def status(ctl: Ctl) -> int:
    reply = ctl.call(ADMIN + "GetStatus")
    s = reply.status

    def human() -> None:
        b, c, w = s.boot, s.connections, s.writer
        recovery = f"; recovery report {b.recovery_report}" if b.recovery_report else ""
        ctl.out.line(f"timelined {s.version} (pid {s.pid}), up {_duration(s.uptime_s)}")
        ctl.out.fields(
            [
                ("socket", s.socket_path),
                ("state", s.state_dir),
                ("log", f"last seq {s.last_seq}, head {s.head_hash[:16]}…{_storage(s.log)}"),
                ("boot", f"{b.verdict} ({b.report_id}){recovery}"),
                ("verify", _verify_summary(s.verify)),
                (
                    "writer",
                    f"queue {w.queue_depth}; {w.events} events in {w.batches} batches, "
                    f"{w.refused} refused",
                ),
                ("clients", f"{c.open} open, {c.total} since start, {c.rejected} rejected"),
                ("READ-ONLY", s.read_only),
                ("FATAL", s.fatal),
            ]
        )

    ctl.out.reply(reply, human)
    return 0


def _storage(log: LogStatus | None) -> str:
    """Where the log is kept, for `status`: "; file, 3 segments, 12.0 MiB"."""
    if log is None:
        return ""
    where = log.backend if log.segments is None else f"{log.backend}, {log.segments} segments"
    return f"; {where}, {log.stored_bytes / (1 << 20):.1f} MiB"


def log(ctl: Ctl) -> int:
    a = ctl.args
    reply: ReadLogReply = ctl.call(ADMIN + "ReadLog", after_seq=a.after_seq, limit=a.limit)
    events = list(reply.events)
    if a.all:
        while reply.next is not None:
            if not ctl.out.json:
                _print_events(ctl, events)
                events = []
            reply = ctl.call(ADMIN + "ReadLog", after_seq=reply.next, limit=a.limit)
            events.extend(reply.events)
        reply = ReadLogReply(events=events, next=None)
    if ctl.out.json:
        ctl.out.print_json(ReadLogReply(events=events, next=reply.next))
        return 0
    _print_events(ctl, events)
    if reply.next is not None:
        ctl.more("--after-seq", reply.next)
    return 0


def _print_events(ctl: Ctl, events: list[Any]) -> None:
    for raw in events:
        ctl.out.line(bytes(raw).decode("utf-8"))


def recovery_report(ctl: Ctl) -> int:
    reply = ctl.call(ADMIN + "GetRecoveryReport", id=ctl.args.id)

    def human() -> None:
        if reply.report is None:
            ctl.out.line("no crash-recovery report: every boot so far found a clean shutdown")
            ctl.out.note("boot records: timelinectl reports --kind boot")
        else:
            ctl.out.line(render_summary(reply.report))

    ctl.out.reply(reply, human)
    return 0


def reports(ctl: Ctl) -> int:
    reply = ctl.call(ADMIN + "ListReports", limit=ctl.args.limit, kind=ctl.args.kind)
    ctl.out.reply(
        reply,
        lambda: ctl.out.table(
            ["ID", "KIND", "VERDICT", "STARTED"],
            [[r.id, r.kind, r.verdict, r.started_at] for r in reply.reports],
        ),
    )
    return 0


def _progress(verify: dict[str, Any]) -> str | None:
    """A progress line from the verifier's status (`progress`: phase, done, total), if any."""
    progress = verify.get("progress")
    if isinstance(progress, dict):
        done, total = progress.get("done"), progress.get("total")
        phase = progress.get("phase") or "verifying"
        if isinstance(done, int) and isinstance(total, int) and total > 0:
            return f"verifying ({phase}): {100 * min(done, total) // total}% ({done}/{total})"
    return None


def _verify_summary(verify: dict[str, Any]) -> str:
    """The verifier's status in one line."""
    if "state" not in verify:
        return _inline(verify)
    parts = [str(verify["state"])]
    line = _progress(verify)
    if line is not None:
        parts.append(line)
    if verify.get("last_run_at"):
        last = f" ({verify['last_state']})" if verify.get("last_state") else ""
        parts.append(f"last run {verify['last_run_at']}{last}")
    if verify.get("differences"):
        parts.append(f"{verify['differences']} differences")
    if verify.get("last_report_id"):
        parts.append(f"report {verify['last_report_id']}")
    return "; ".join(parts)


def _failed(result: dict[str, Any] | None) -> bool:
    """Whether a verification result says something is wrong (drift, damage, failure)."""
    if not result:
        return False
    if result.get("ok") is False:
        return True
    verdict = str(result.get("verdict") or result.get("state") or "")
    if verdict in ("drift", "damaged", "failed", "error"):
        return True
    return bool(result.get("drift") or result.get("differences") or result.get("damage"))


def _wait_with_progress(ctl: Ctl) -> Any:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["reply"] = ctl.call(ADMIN + "Verify", wait=True)
        except BaseException as exc:  # re-raised on the main thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    shown = False
    while worker.is_alive():
        worker.join(0.25)
        if not worker.is_alive():
            break
        try:
            line = _progress(ctl.call(ADMIN + "GetStatus").status.verify)
        except Exception:
            line = None
        if line is not None:
            ctl.out.stderr.write("\r" + escape(line).ljust(60))
            ctl.out.stderr.flush()
            shown = True
    if shown:
        ctl.out.stderr.write("\r" + " " * 60 + "\r")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["reply"]


def _show_result(ctl: Ctl, result: dict[str, Any]) -> None:
    """A verification report: its summary and scalar fields, then each difference."""
    if result.get("summary"):
        ctl.out.line(str(result["summary"]))
    scalars = [(k, v) for k, v in sorted(result.items()) if not isinstance(v, dict | list)]
    ctl.out.fields([(k, v) for k, v in scalars if k != "summary"])
    for diff in result.get("differences") or []:
        ctl.out.line(escape(f"difference  {_describe_difference(diff)}"))


def _describe_difference(diff: Any) -> str:
    """One difference as the journal and `timelined verify` word it: its fields, both values."""
    if not isinstance(diff, dict):
        return str(diff)
    try:
        return msgspec.convert(diff, Difference).describe()
    except msgspec.ValidationError:  # a report of another version: its scalars at least
        return _inline(diff)


def verify(ctl: Ctl) -> int:
    if not ctl.args.wait:
        reply = ctl.call(ADMIN + "Verify", wait=False)
        ctl.out.reply(
            reply,
            lambda: ctl.out.line(
                f"verification started ({_verify_summary(reply.status or {})}); "
                "see `timelinectl status`, or wait with `timelinectl verify --wait`"
            ),
        )
        return 0
    if not ctl.out.json and ctl.out.stderr.isatty():
        reply = _wait_with_progress(ctl)
    else:
        reply = ctl.call(ADMIN + "Verify", wait=True)
    result = reply.result

    def human() -> None:
        if result is None:
            ctl.out.line("verification finished (the verifier returned no report)")
            return
        _show_result(ctl, result)

    ctl.out.reply(reply, human)
    return 1 if _failed(result) else 0


def verify_report(ctl: Ctl) -> int:
    reply = ctl.call(ADMIN + "GetVerifyReport")

    def human() -> None:
        if reply.report is None:
            ctl.out.line("no verification has finished yet")
        else:
            _show_result(ctl, reply.report)

    ctl.out.reply(reply, human)
    return 1 if _failed(reply.report) else 0


def repair(ctl: Ctl) -> int:
    reply = ctl.call(ADMIN + "Repair")

    def human() -> None:
        if reply.result is None:
            ctl.out.line("repair finished")
        else:
            ctl.out.fields(sorted(reply.result.items()))

    ctl.out.reply(reply, human)
    return 0


def reload(ctl: Ctl) -> int:
    reply = ctl.call(ADMIN + "Reload")

    def human() -> None:
        if reply.changed:
            ctl.out.line("applied: " + ", ".join(reply.changed))
        else:
            ctl.out.line("nothing changed")
        if reply.restart_required:
            ctl.out.line("need a restart: " + ", ".join(reply.restart_required))

    ctl.out.reply(reply, human)
    return 0


def metrics(ctl: Ctl) -> int:
    reply = ctl.call(ADMIN + "GetMetrics")
    target = ctl.args.textfile
    if target is None:
        ctl.out.reply(reply, lambda: ctl.out.text(reply.text))
        return 0
    # node_exporter may read the file at any moment: write a temporary file next to it and
    # rename it over, so that it only ever sees a whole scrape.
    path = Path(target)
    try:
        write_file_atomic(path, reply.text.encode(), mode=0o644, exact_mode=True)
    except OSError as exc:
        return ctl.out.fail(
            73, "CannotWrite", f"cannot write {path}: {exc.strerror}", path=str(path)
        )  # 73: EX_CANTCREAT
    if ctl.out.json:
        ctl.out.print_json({"written": str(path), "bytes": len(reply.text.encode())})
    return 0
