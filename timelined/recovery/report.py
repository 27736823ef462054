"""Boot records and crash-recovery reports: what the boot found, what it did, what to do next.

Every boot writes `reports/boot-<time>.json`; an unclean boot or any repair also writes a full
`reports/recovery-<time>.json`. Both are the same Struct (`timelined.api.reports.Report`, as
GetRecoveryReport sends it); `kind` tells them apart. Reports are written atomically
(auditlog/atomic.py) so a report is never half there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import msgspec

from timelined.api.reports import Report
from timelined.auditlog.atomic import make_dirs, write_file_atomic
from timelined.auditlog.fileops import OS_FILEOPS, FileOps


def report_id(kind: str, started_at: str) -> str:
    stamp = started_at.replace("-", "").replace(":", "").replace(".", "")
    return f"{kind}-{stamp}-{os.getpid()}"


class _Written(Protocol):
    """A report Struct as the writer needs it: an id, and where it was written."""

    id: str
    path: str | None


def write_report(reports_dir: Path, report: _Written, fileops: FileOps = OS_FILEOPS) -> Path:
    """Write any report Struct (boot, recovery, repair, verify) as `<id>.json`, atomically."""
    make_dirs(reports_dir, fileops)
    path = reports_dir / f"{report.id}.json"
    report.path = str(path)
    data = msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"
    write_file_atomic(path, data, fileops=fileops, mode=0o666)
    return path


def read_report(path: Path) -> Report:
    return msgspec.json.decode(path.read_bytes(), type=Report)


def list_reports(
    reports_dir: Path, prefixes: tuple[str, ...] = ("boot", "recovery", "repair")
) -> list[Path]:
    """Report files, newest first."""
    if not reports_dir.exists():
        return []
    found: list[tuple[int, str, Path]] = []
    for p in reports_dir.iterdir():
        if p.suffix != ".json" or not p.name.startswith(prefixes):
            continue
        try:
            found.append((p.stat().st_mtime_ns, p.name, p))
        except FileNotFoundError:  # pruned meanwhile (the verifier keeps only its newest)
            continue
    return [p for _, _, p in sorted(found, reverse=True)]
