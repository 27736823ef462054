"""The parameters and replies of the Admin interface's methods."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from timelined.api.reports import Report, ReportInfo
from timelined.api.scalars import DEFAULT_LIMIT, Cursor, Limit, Params


class ReadLogParams(Params, frozen=True):
    after_seq: Cursor = 0
    limit: Limit = DEFAULT_LIMIT


class GetRecoveryReportParams(Params, frozen=True):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


ReportKind = Literal["boot", "recovery", "repair", "verify"]


class ListReportsParams(Params, frozen=True):
    limit: Limit = DEFAULT_LIMIT
    kind: ReportKind | None = None


class VerifyParams(Params, frozen=True):
    wait: bool = False


class BootStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The boot that started this daemon."""

    verdict: str
    report_id: str
    recovery_report: str | None = None
    started_at: str
    fast_path: bool
    events_rolled_forward: int


class ConnectionStats(msgspec.Struct, frozen=True, kw_only=True):
    """Connections now and since the start; docs/operations.md "Connection slots" has more."""

    open: int
    total: int
    rejected: int
    streams: int
    calls: int
    errors: int
    # Open connections by class: full, read_only.
    by_class: dict[str, int] = msgspec.field(default_factory=dict)
    # Refusals by reason: admission ([auth] allows the peer nothing), max_connections, reserved
    # (only the writers' slots were left), max_connections_per_uid.
    rejected_by_reason: dict[str, int] = msgspec.field(default_factory=dict)


class WriterStats(msgspec.Struct, frozen=True, kw_only=True):
    commands: int
    refused: int
    events: int
    batches: int
    queue_depth: int


class LogStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The log's storage. `backend`: "file" (segment files) or "table" (PostgreSQL).
    `segment_bytes`: `[log] segment_bytes`, the size at which the file writer starts a new
    segment (and `timelinectl export-log` cuts a table's lines). `stored_bytes`: what the log
    occupies; `segments`: its segment files (null for a table)."""

    backend: str
    segment_bytes: int
    stored_bytes: int
    segments: int | None = None


class Status(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    pid: int
    started_at: str
    uptime_s: float
    state_dir: str
    socket_path: str
    last_seq: int
    head_hash: str
    boot: BootStatus
    verify: dict[str, Any]
    connections: ConnectionStats
    writer: WriterStats
    read_only: str | None = None
    fatal: str | None = None
    log: LogStatus | None = None


class StatusReply(msgspec.Struct, frozen=True):
    status: Status


class ReadLogReply(msgspec.Struct, frozen=True):
    """`events` are the log's lines byte for byte (each a JSON object with its `hash`).
    `segments`: the seqs among `events` that begin a segment file of the daemon's log, so that
    a copy can be cut exactly as the log is (`timelinectl export-log`); null when the log is a
    table (PostgreSQL), which has no segments."""

    events: list[msgspec.Raw]
    next: int | None = None
    segments: list[int] | None = None


class RecoveryReportReply(msgspec.Struct, frozen=True):
    report: Report | None = None


class ReportsReply(msgspec.Struct, frozen=True):
    reports: list[ReportInfo]


class VerifyReply(msgspec.Struct, frozen=True):
    result: dict[str, Any] | None = None
    status: dict[str, Any] | None = None


class VerifyReportReply(msgspec.Struct, frozen=True):
    report: dict[str, Any] | None = None


class RepairReply(msgspec.Struct, frozen=True):
    result: dict[str, Any] | None = None


class ReloadReply(msgspec.Struct, frozen=True):
    changed: list[str]
    restart_required: list[str] = msgspec.field(default_factory=list)


class EmptyReply(msgspec.Struct, frozen=True):
    pass


class MetricsReply(msgspec.Struct, frozen=True):
    """`text`: the Prometheus text exposition format, version 0.0.4."""

    text: str
