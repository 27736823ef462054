"""What the verifier reports: GetStatus's `verify`, Verify's and Repair's results, its reports.

Two sides are compared for every entity: `state` is what the state database holds, `log` is what
replaying the audit log produces. A difference is `missing` (the log has it, the state does not),
`extra` (the state has it, the log does not) or `changed` (both have it; `fields` says which
columns differ, with both values, long text truncated).

(They travel as `object`s: `Difference.key`, an int or a string, has no Varlink type.)
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

VerifyState = Literal["ok", "drift", "damaged", "failed"]
StatusState = Literal["ok", "drift", "damaged", "failed", "running", "never"]
DiffKind = Literal["missing", "extra", "changed"]
Mode = Literal["daemon", "offline"]
TreeState = Literal["ok", "mismatch", "skipped"]


class FieldDiff(msgspec.Struct, frozen=True):
    """One column that differs: its value in the state database and after replaying the log."""

    field: str
    state: Any
    log: Any


class Difference(msgspec.Struct, frozen=True, kw_only=True):
    """One entity that differs between the state database and the replay of the log."""

    entity: str  # conversation, context, block, focus, crossref, meta, search index, schema
    id: str
    kind: DiffKind
    key: int | str | None = None  # the table's primary key where it is not `id` (a block's seq)
    fields: list[FieldDiff] = msgspec.field(default_factory=list)
    detail: str | None = None

    def describe(self) -> str:
        """One line for the journal and the human report."""
        what = f"{self.entity} {self.id}"
        if self.key is not None:
            what += f" (key {self.key})"
        if self.kind == "changed" and self.fields:
            return f"{what} changed: " + ", ".join(
                f"{f.field} is {_short(f.state)} in the state, {_short(f.log)} in the log"
                for f in self.fields
            )
        text = {
            "missing": "is missing from the state database",
            "extra": "is in the state database but not in the log",
            "changed": "changed",
        }[self.kind]
        return f"{what} {text}" + (f" ({self.detail})" if self.detail else "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class ChainDamage(msgspec.Struct, frozen=True, kw_only=True):
    """The first place the hash chain breaks (see auditlog.scan.Damage for the kinds)."""

    seq: int
    kind: str
    segment: str | None
    offset: int | None
    detail: str
    found_seq: int | None = None


class ChainTorn(msgspec.Struct, frozen=True, kw_only=True):
    """An unfinished last line: not damage; the next boot cuts it into quarantine."""

    segment: str
    offset: int
    length: int
    seq: int
    reason: str


class ChainResult(msgspec.Struct, frozen=True, kw_only=True):
    """The chain check: every line's hash, the prev links, seqs without gaps, segment names."""

    ok: bool
    upto_seq: int | None  # where the walk was asked to stop (None: the end of the log)
    records: int
    segments: int
    bytes_scanned: int
    head_seq: int
    head_hash: str
    seconds: float
    damage: ChainDamage | None = None
    torn: ChainTorn | None = None


class TreeResult(msgspec.Struct, frozen=True, kw_only=True):
    """The Merkle tree's check (docs/transparency.md): every stored hash of its first `size`
    leaves recomputed from the log. On a mismatch, the first node that differs: `level` 0 is a
    leaf hash, else the node `index` of that level, covering the leaves from `first_bad_leaf`
    (leaf i is seq i + 1). `skipped` says why in `detail` (no tree kept, the log damaged)."""

    state: TreeState
    size: int
    level: int | None = None
    index: int | None = None
    first_bad_leaf: int | None = None
    detail: str = ""
    seconds: float = 0.0


class VerifyProgress(msgspec.Struct, frozen=True):
    phase: str  # snapshot, replay, compare, chain
    done: int
    total: int


class VerifyReport(msgspec.Struct, kw_only=True):
    """One verification run, as written to STATE_DIR/reports/verify-<time>.json."""

    id: str
    kind: Literal["verify"] = "verify"
    mode: Mode = "daemon"
    trigger: str  # boot, interval, request, watch:<path>, data_version, repair, offline
    state: VerifyState
    started_at: str
    finished_at: str
    seconds: float
    snapshot_seq: int  # S: the state database's last_seq at the snapshot that was compared
    log_head_seq: int | None = None  # the last good seq the chain walk reached
    events_checked: int  # events replayed and compared
    events_per_second: float
    chain: ChainResult | None = None
    differences: list[Difference] = msgspec.field(default_factory=list)
    differences_total: int = 0
    search_index: str = ""
    tree: TreeResult | None = None  # None: a report of a version without the tree check
    summary: str = ""
    error: str | None = None
    notes: list[str] = msgspec.field(default_factory=list)
    path: str | None = None


class VerifyStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The verifier's part of GetStatus: `state` is `running` during a run, else the last result."""

    state: StatusState
    last_state: VerifyState | None = None  # the last finished run's result, also while running
    last_run_at: str | None = None
    last_report_id: str | None = None
    snapshot_seq: int | None = None
    events_checked: int = 0
    differences: int = 0
    runs: int = 0
    drift_runs: int = 0
    damaged_runs: int = 0
    repairs: int = 0
    last_repair_at: str | None = None
    tree: TreeState | None = None  # the last run's tree check
    watch_wakeups: int = 0  # the file watcher's wake-ups (the daemon's own writes raise none)
    progress: VerifyProgress | None = None


class RepairResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a repair did; its report is reports/repair-<time>.json (a recovery Report)."""

    report_id: str
    report_path: str
    started_at: str
    finished_at: str
    seconds: float
    pause_seconds: float  # how long writes waited for the swap
    last_seq: int
    events_replayed: int  # replayed into the new file while the daemon kept serving
    events_rolled_forward: int  # committed meanwhile, applied while writes were paused
    quarantined_to: str | None  # where the old state database was kept
    reason: str
