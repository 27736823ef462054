"""Figures, targets and the two outputs: a JSON document and a readable table."""

from __future__ import annotations

import math
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

Op = Literal[">=", "<="]


@dataclass(frozen=True)
class Target:
    """A bound a figure must meet: `value op threshold`; `text` says where it comes from."""

    op: Op
    threshold: float
    text: str = ""

    def check(self, value: float | None) -> bool | None:
        if value is None or math.isnan(value):
            return None
        return value >= self.threshold if self.op == ">=" else value <= self.threshold

    def describe(self, unit: str) -> str:
        bound = f"{self.op} {_fmt(self.threshold)} {unit}".strip()
        return f"{bound} ({self.text})" if self.text else bound


class Figure(msgspec.Struct, kw_only=True):
    """A measured figure; `status`: PASS / MISS, "info" without a target, "n/a" unmeasured."""

    part: str
    name: str
    value: float | None
    unit: str
    target: str | None = None
    status: str = "info"
    ratio: float | None = None
    ratio_to: str | None = None
    detail: dict[str, Any] = msgspec.field(default_factory=dict)
    note: str = ""


@dataclass
class Results:
    """Everything one run measured, plus the raw limits other parts compare against."""

    quick: bool
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    loadavg_at_start: tuple[float, ...] = field(default_factory=os.getloadavg)
    figures: list[Figure] = field(default_factory=list)
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    limits: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        part: str,
        name: str,
        value: float | None,
        unit: str,
        *,
        target: Target | None = None,
        ratio_to: tuple[str, float] | None = None,
        detail: dict[str, Any] | None = None,
        note: str = "",
        quiet: bool = False,
    ) -> Figure:
        status = "info"
        if value is None or (isinstance(value, float) and math.isnan(value)):
            status = "n/a"
            value = None
        if target is not None and value is not None:
            status = "PASS" if target.check(value) else "MISS"
        ratio = None
        if ratio_to is not None and value is not None and ratio_to[1] > 0:
            ratio = value / ratio_to[1]
        fig = Figure(
            part=part,
            name=name,
            value=value,
            unit=unit,
            target=target.describe(unit) if target is not None else None,
            status=status,
            ratio=ratio,
            ratio_to=ratio_to[0] if ratio_to is not None else None,
            detail=detail or {},
            note=note,
        )
        self.figures.append(fig)
        if not quiet:
            print("  " + _row(fig), flush=True)
        return fig

    def part_data(self, part: str) -> dict[str, Any]:
        return self.parts.setdefault(part, {"status": "run", "figures": []})

    # --- output --------------------------------------------------------------------------------

    def document(self, parts_run: list[str], seconds: float) -> dict[str, Any]:
        by_part: dict[str, Any] = {}
        for part in parts_run:
            data = dict(self.parts.get(part, {"status": "run"}))
            data["figures"] = [msgspec.to_builtins(f) for f in self.figures if f.part == part]
            by_part[part] = data
        return {
            "date": self.started.isoformat(timespec="seconds"),
            "quick": self.quick,
            "seconds": round(seconds, 1),
            "machine": {"loadavg_at_start": self.loadavg_at_start, **machine_info()},
            "limits": self.limits,
            "summary": {
                "pass": sum(1 for f in self.figures if f.status == "PASS"),
                "miss": sum(1 for f in self.figures if f.status == "MISS"),
            },
            "parts": by_part,
            "notes": self.notes,
        }

    def table(self) -> str:
        header = ("part", "figure", "value", "target", "status", "ratio")
        rows = [header]
        for f in self.figures:
            rows.append(
                (
                    f.part,
                    f.name,
                    f"{_fmt(f.value)} {f.unit}".strip() if f.value is not None else "—",
                    f.target or "",
                    f.status,
                    f"{f.ratio:.2f}x {f.ratio_to}" if f.ratio is not None else "",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = []
        for n, r in enumerate(rows):
            lines.append(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
            if n == 0:
                lines.append("-+-".join("-" * w for w in widths))
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [
            "| part | figure | value | target | status | ratio to raw limit |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for f in self.figures:
            value = f"{_fmt(f.value)} {f.unit}".strip() if f.value is not None else "—"
            ratio = f"{f.ratio:.2f}x {f.ratio_to}" if f.ratio is not None else ""
            status = f"**{f.status}**" if f.status == "MISS" else f.status
            lines.append(
                f"| {f.part} | {f.name} | {value} | {f.target or ''} | {status} | {ratio} |"
            )
        return "\n".join(lines)


def _row(f: Figure) -> str:
    value = f"{_fmt(f.value)} {f.unit}".strip() if f.value is not None else "—"
    parts = [f"{f.name}: {value}"]
    if f.target:
        parts.append(f"[target {f.target}: {f.status}]")
    if f.ratio is not None:
        parts.append(f"({f.ratio:.2f}x {f.ratio_to})")
    if f.note:
        parts.append(f"— {f.note}")
    return " ".join(parts)


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["mem_gib"] = round(int(mem[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    import sqlite3

    info["sqlite"] = sqlite3.sqlite_version
    return info
