"""Verification reports: `STATE_DIR/reports/verify-<time>-<pid>.json`, written atomically.

Written like the recovery reports (auditlog/atomic.py: temporary file, fsync, rename, fsync
the directory), so a report is never half there. Old reports of clean runs are pruned (the
newest `KEEP_OK` stay); reports of drift, damage or failure are kept until an operator removes
them.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from timelined.api.verify import VerifyReport
from timelined.auditlog.fileops import OS_FILEOPS, FileOps
from timelined.recovery.report import report_id as recovery_report_id
from timelined.recovery.report import write_report as write_any_report

PREFIX = "verify-"
KEEP_OK = 100


def report_id(started_at: str) -> str:
    """`verify-<time>-<pid>` from a log-format timestamp (2026-11-22T03:38:00.123456Z)."""
    return recovery_report_id(PREFIX.rstrip("-"), started_at)


def write_report(reports_dir: Path, report: VerifyReport, fileops: FileOps = OS_FILEOPS) -> Path:
    return write_any_report(reports_dir, report, fileops)


def read_report(path: Path) -> VerifyReport:
    return msgspec.json.decode(path.read_bytes(), type=VerifyReport)


def list_reports(reports_dir: Path) -> list[Path]:
    """Verification report files, newest first (their names sort by time)."""
    if not reports_dir.is_dir():
        return []
    found = [p for p in reports_dir.iterdir() if p.name.startswith(PREFIX) and p.suffix == ".json"]
    return sorted(found, key=lambda p: p.name, reverse=True)


def latest_report(reports_dir: Path) -> VerifyReport | None:
    """The newest readable verification report, if any."""
    for path in list_reports(reports_dir):
        try:
            return read_report(path)
        except (OSError, msgspec.DecodeError):
            continue
    return None


def prune_reports(reports_dir: Path, keep_ok: int = KEEP_OK) -> int:
    """Remove clean-run reports beyond the newest `keep_ok`; returns how many went."""
    removed = 0
    for path in list_reports(reports_dir)[keep_ok:]:
        try:
            if read_report(path).state == "ok":
                path.unlink()
                removed += 1
        except (OSError, msgspec.DecodeError):
            continue
    return removed
