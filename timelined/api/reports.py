"""Boot, recovery and repair reports as GetRecoveryReport and ListReports send them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter
from typing import Literal

import msgspec

Verdict = Literal["clean", "recovered", "recovered_with_loss", "degraded", "failed"]
Kind = Literal["boot", "recovery", "repair"]


class PhaseTime(msgspec.Struct, frozen=True):
    name: str
    seconds: float


class TornTail(msgspec.Struct, frozen=True):
    segment: str
    offset: int
    length: int
    quarantined_to: str


class Damage(msgspec.Struct, frozen=True):
    seq: int | None
    segment: str | None
    offset: int | None
    reason: str


class Rebuild(msgspec.Struct, frozen=True):
    reason: str
    quarantined_to: str | None  # where the old state database was kept
    events_replayed: int
    events_lost: int  # events the old state had that the log does not


class Report(msgspec.Struct, kw_only=True):
    id: str
    kind: Kind
    verdict: Verdict = "clean"
    version: str
    started_at: str
    finished_at: str = ""
    marker_found: bool = False
    marker_problem: str | None = None
    # The run before served read-only (log damage a verification recorded): such a run writes
    # no clean-shutdown marker on purpose, so its absence says nothing about a crash.
    read_only_before: bool = False
    fast_path: bool = False
    segments_scanned: int = 0
    lines_scanned: int = 0
    log_last_seq: int = 0
    state_last_seq_before: int | None = None
    events_rolled_forward: int = 0
    integrity_check: str = "skipped"
    torn: list[TornTail] = msgspec.field(default_factory=list)
    # NUL bytes cut off the last segment: space the writer had reserved ahead of its records
    # (a run that did not stop cleanly). Not a torn tail: nothing was written there.
    reserved_released: int = 0
    damage: Damage | None = None
    rebuilds: list[Rebuild] = msgspec.field(default_factory=list)
    events_lost: int = 0
    phases: list[PhaseTime] = msgspec.field(default_factory=list)
    actions: list[str] = msgspec.field(default_factory=list)
    error: str | None = None
    recovery_report: str | None = None  # on a boot record: the id of the full report
    path: str | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase of the boot into the report."""
        started = perf_counter()
        try:
            yield
        finally:
            self.phases.append(PhaseTime(name, round(perf_counter() - started, 6)))


class ReportInfo(msgspec.Struct, frozen=True):
    """One line of `ListReports`."""

    id: str
    kind: str
    verdict: str
    started_at: str
