"""GetMetrics: the daemon's counters in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import msgspec

from timelined.daemon.app import App
from timelined.histogram import Histogram

_VERDICTS = ("clean", "recovered", "recovered_with_loss", "degraded", "failed")
_VERIFY_STATES = ("ok", "drift", "damaged", "running", "never")
_CLASSES = ("full", "read_only")
# Why a connection got no slot (timelined/varlink/admission.py): "admission" is [auth]'s refusal.
_REFUSALS = ("admission", "max_connections", "reserved", "max_connections_per_uid")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Text:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, name: str, kind: str, doc: str, samples: Iterable[tuple[dict[str, str], float]]
    ) -> None:
        self.lines.append(f"# HELP {name} {doc}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_num(value)}")

    def scalar(self, name: str, kind: str, doc: str, value: float) -> None:
        self.metric(name, kind, doc, [({}, value)])

    def histogram(self, name: str, doc: str, h: Histogram) -> None:
        self.lines.append(f"# HELP {name} {doc}")
        self.lines.append(f"# TYPE {name} histogram")
        for le, count in h.cumulative():
            self.lines.append(f'{name}_bucket{{le="{le}"}} {count}')
        self.lines.append(f"{name}_sum {_num(h.total)}")
        self.lines.append(f"{name}_count {h.count}")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def render(app: App) -> str:
    """Every metric, one scrape's worth of text."""
    t = _Text()
    engine = app.engine
    s = engine.stats
    t.scalar("timelined_events_total", "counter", "Events appended to the audit log.", s.events)
    t.scalar("timelined_commands_total", "counter", "Write commands processed.", s.commands)
    t.scalar("timelined_commands_refused_total", "counter", "Commands refused.", s.refused)
    t.scalar("timelined_batches_total", "counter", "Group-commit batches written.", s.batches)
    t.scalar("timelined_disk_full_total", "counter", "Batches refused: disk full.", s.disk_full)
    t.histogram("timelined_batch_size", "Commands per group-commit batch.", s.batch_sizes)
    t.histogram("timelined_fsync_seconds", "Latency of one log fsync.", s.fsync_seconds)
    t.histogram("timelined_batch_write_seconds", "Write plus fsync of one batch.", s.write_seconds)
    t.scalar(
        "timelined_queue_depth", "gauge", "Commands waiting for the writer.", engine.queue_depth
    )
    t.scalar("timelined_last_seq", "gauge", "Seq of the newest committed event.", engine.last_seq)
    t.scalar(
        "timelined_search_index_lag_events",
        "gauge",
        "Events acknowledged whose blocks may not be searchable yet (the index follows the "
        "commits).",
        max(0, engine.acked_seq - engine.indexed_seq),
    )
    t.scalar(
        "timelined_state_commit_lag_events",
        "gauge",
        "Events acknowledged (in the log) that the state database has not committed yet (the "
        "COMMIT follows the answers, coalesced).",
        max(0, engine.acked_seq - engine.committed_seq),
    )
    t.scalar(
        "timelined_state_commits_total",
        "counter",
        "State database COMMITs of answered batches.",
        s.state_commits,
    )
    t.scalar(
        "timelined_state_wal_checkpoints_total",
        "counter",
        "Checkpoints of the state database's WAL, by the writer after a COMMIT (SQLite only).",
        s.wal_checkpoints,
    )
    t.scalar(
        "timelined_writer_inline_writes_total",
        "counter",
        "Batches of one append written and fsynced by the event loop, not the writer's thread.",
        s.inline_writes,
    )
    t.scalar(
        "timelined_read_only",
        "gauge",
        "1 when writes are refused (log damaged).",
        1 if engine.read_only is not None else 0,
    )
    srv = app.server.stats()
    t.scalar("timelined_connections", "gauge", "Open client connections.", srv.connections_open)
    t.scalar(
        "timelined_connections_total", "counter", "Connections accepted.", srv.connections_total
    )
    t.scalar(
        "timelined_connections_rejected_total",
        "counter",
        "Connections refused (every reason).",
        srv.connections_rejected,
    )
    t.metric(
        "timelined_connections_by_class",
        "gauge",
        "Open client connections by class (full, read_only).",
        [({"class": c}, srv.connections_by_tier.get(c, 0)) for c in _CLASSES],
    )
    t.metric(
        "timelined_connections_refused_total",
        "counter",
        "Connections refused at accept, by reason.",
        [({"reason": r}, srv.rejected_by_reason.get(r, 0)) for r in _REFUSALS],
    )
    t.scalar("timelined_calls_total", "counter", "Varlink calls served.", srv.calls_total)
    t.scalar(
        "timelined_call_errors_total", "counter", "Calls answered with an error.", srv.errors_total
    )
    t.scalar("timelined_streams", "gauge", "Streaming calls in progress.", srv.streams_open)
    verdict = app.boot.verdict
    t.metric(
        "timelined_boot_verdict",
        "gauge",
        "The verdict of this boot (1 for the current one).",
        [({"verdict": v}, 1 if v == verdict else 0) for v in _VERDICTS],
    )
    _verify_metrics(t, app)
    t.scalar("timelined_watchers", "gauge", "Open Watch streams.", app.watch.watchers)
    t.scalar(
        "timelined_watchers_dropped_total", "counter", "Slow watchers dropped.", app.watch.dropped
    )
    t.scalar(
        "timelined_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        round(time.monotonic() - app.started_monotonic, 3),
    )
    return "\n".join(t.lines) + "\n"


def _verify_metrics(t: _Text, app: App) -> None:
    if app.verifier is None:
        status: dict[str, Any] = {}
    else:
        raw = app.verifier.status()
        status = msgspec.to_builtins(raw) if not isinstance(raw, dict) else raw
    state = str(status.get("state", "never"))
    t.metric(
        "timelined_verify_state",
        "gauge",
        "The verifier's state (1 for the current one).",
        [({"state": v}, 1 if v == state else 0) for v in _VERIFY_STATES],
    )
    t.scalar(
        "timelined_verify_runs_total", "counter", "Verification runs.", int(status.get("runs", 0))
    )
    t.scalar(
        "timelined_verify_drift_runs_total",
        "counter",
        "Verification runs that found drift.",
        int(status.get("drift_runs", 0)),
    )
    t.scalar(
        "timelined_verify_watch_wakeups_total",
        "counter",
        "Wake-ups of the verifier's file watcher (the daemon's own writes raise none).",
        int(status.get("watch_wakeups", 0)),
    )
    t.scalar(
        "timelined_verify_differences",
        "gauge",
        "Differences found by the last run.",
        int(status.get("differences", 0)),
    )
