"""The reports directory as the Admin interface reads it: one boot/recovery/repair report by id
(or the latest recovery report), and the list of every report with its verdict.

Reads only; the reports are written by `report.py` (boot, recovery, repair) and by the
verifier (`verify-…`), whose shape is read here only as far as `ListReports` needs.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import msgspec

from timelined.api.reports import Report, ReportInfo
from timelined.errors import InvalidArgument, ReportNotFound
from timelined.recovery.report import list_reports, read_report

log = logging.getLogger("timelined.recovery.reports")

_REPORT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def report_path(reports_dir: Path, id: str) -> Path:
    """The file of report `id` (with or without `.json`); ReportNotFound if there is none."""
    name = id.removesuffix(".json")
    if not _REPORT_ID.match(name):
        raise ReportNotFound(id)
    path = reports_dir / f"{name}.json"
    if not path.is_file():
        raise ReportNotFound(id)
    return path


def load_report(reports_dir: Path, id: str | None) -> Report | None:
    """Report `id`, or with no id the newest readable recovery report (None if there is none).

    ReportNotFound for an id with no file; InvalidArgument for a verification report or a file
    that is not a boot, recovery or repair report.
    """
    if id is not None:
        path = report_path(reports_dir, id)
        if path.name.startswith("verify-"):  # another shape, shown by another verb
            raise InvalidArgument(
                "id",
                f"{id} is a verification report: `timelinectl verify-report` shows the latest; "
                f"this one is {path}",
            )
        try:
            return read_report(path)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidArgument(
                "id", f"{id} is not a boot, recovery or repair report ({exc})"
            ) from None
    for path in list_reports(reports_dir, ("recovery",)):
        try:
            return read_report(path)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("unreadable report %s: %s", path, exc)
    return None


class _ReportHead(msgspec.Struct):
    """What ListReports needs of any report file (recovery Reports and verify reports)."""

    id: str
    kind: str
    started_at: str
    verdict: str | None = None
    state: str | None = None


def report_infos(reports_dir: Path, limit: int, kind: str | None) -> list[ReportInfo]:
    """The newest `limit` reports (of `kind`, or of every kind), an unreadable one as such."""
    prefixes = (kind,) if kind else ("boot", "recovery", "repair", "verify")
    infos: list[ReportInfo] = []
    for path in list_reports(reports_dir, prefixes)[:limit]:
        try:
            head = msgspec.json.decode(path.read_bytes(), type=_ReportHead)
            verdict = head.verdict or head.state or "?"
            infos.append(ReportInfo(head.id, head.kind, verdict, head.started_at))
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            infos.append(ReportInfo(path.stem, path.stem.split("-", 1)[0], "unreadable", ""))
    return infos
