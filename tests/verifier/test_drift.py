"""The drift matrix: direct changes to the state database, made with the `sqlite3` program.

Offline, each change is reported naming the entity and its id. Live, a running Engine and
Verifier notice each change by themselves (no verify call: the data_version watch starts the
run), `repair()` restores an exact match with a replay of the log, and the next run is clean.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from tests.helpers import dump_state, fts_ok, replay_dump
from tests.verifier.conftest import config_for, verify_offline
from tests.verifier.workload import populate
from timelined.api.verify import Difference, VerifyReport
from timelined.ctl.report_text import render_summary
from timelined.recovery.report import read_report
from timelined.verifier import Verifier
from timelined.verifier.runner import Paths, verify_paths
from timelined.writer.engine import Engine


def sqlite3_cli(db: Path, sql: str) -> None:
    # The tool waits for the write lock as an operator's would: the engine takes it for its
    # COMMITs and index passes (up to 80 ms apart), and without a timeout the CLI gave up at
    # once ("database is locked", exit 5) in about one run in six.
    cmd = ["sqlite3", "-cmd", ".timeout 5000", str(db), sql]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@dataclass
class Drift:
    """A change to the state database and what the verifier must say about it."""

    name: str
    sql: str
    entity: str
    id: str
    kind: str
    fields: tuple[str, ...] = ()


def drift_cases(
    db: Path | Callable[[str], list[tuple[object, ...]]], offset: int = 20
) -> list[Drift]:
    """The cases on the state database `db` (a path, or a query function on another backend's
    state: the contract suite's tests/contract/test_drift.py)."""
    ask = db if callable(db) else lambda sql: query(db, sql)
    (block_id, block_seq), (gone_id, _) = ask(
        f"SELECT id, seq FROM blocks ORDER BY seq LIMIT 2 OFFSET {offset}"
    )
    (conv_id, ctx_id) = ask("SELECT conversation_id, id FROM contexts ORDER BY id LIMIT 1")[0]
    (status_ctx, _status) = ask(
        "SELECT id, status FROM contexts WHERE status != 'archived' ORDER BY id DESC LIMIT 1"
    )[0]
    return [
        Drift(
            "update a block's content",
            f"UPDATE blocks SET content = 'tampered' WHERE seq = {block_seq}",
            "block",
            str(block_id),
            "changed",
            ("content",),
        ),
        Drift(
            "delete a block",
            f"DELETE FROM blocks WHERE id = '{gone_id}'",
            "block",
            str(gone_id),
            "missing",
        ),
        Drift(
            "insert a context",
            "INSERT INTO contexts (id, conversation_id, parent_id, status, reason, inherit_from, "
            "inherit_last, inherit_upto, tags, created_at, created_seq, updated_at, updated_seq) "
            f"VALUES ('ctx_intruder', '{conv_id}', '{ctx_id}', 'active', 'x', NULL, 0, 0, '[]', "
            "'2026-01-01T00:00:00.000000Z', 1, '2026-01-01T00:00:00.000000Z', 1)",
            "context",
            "ctx_intruder",
            "extra",
        ),
        Drift(
            "change a status",
            f"UPDATE contexts SET status = 'archived' WHERE id = '{status_ctx}'",
            "context",
            str(status_ctx),
            "changed",
            ("status",),
        ),
        Drift(
            "change meta.last_seq",
            "UPDATE meta SET last_seq = last_seq - 3",
            "meta",
            "meta",
            "changed",
            ("last_hash",),
        ),
    ]


def find(report: VerifyReport, case: Drift) -> Difference:
    for diff in report.differences:
        if (diff.entity, diff.id, diff.kind) == (case.entity, case.id, case.kind):
            assert {f.field for f in diff.fields} >= set(case.fields), diff
            return diff
    raise AssertionError(f"{case.name}: not reported; got {report.differences[:5]}")


def test_untouched_state_is_ok(small_dir: Path) -> None:
    report = verify_offline(small_dir)
    assert report.state == "ok", report.summary
    assert report.differences_total == 0
    assert "integrity-check ok" in report.search_index


@pytest.mark.parametrize("index", range(5), ids=lambda i: f"case{i}")
def test_each_drift_is_named_offline(index: int, small_dir: Path) -> None:
    case = drift_cases(small_dir / "state.db")[index]
    sqlite3_cli(small_dir / "state.db", case.sql)
    report = verify_offline(small_dir)
    assert report.state == "drift", report.summary
    diff = find(report, case)
    assert diff.describe() in report.summary or report.differences_total > 3


def test_changed_values_are_shown_with_both_sides_and_long_text_truncated(
    small_dir: Path,
) -> None:
    db = small_dir / "state.db"
    block_id, content = query(db, "SELECT id, content FROM blocks ORDER BY seq LIMIT 1")[0]
    sqlite3_cli(db, f"UPDATE blocks SET content = '{'x' * 5000}' WHERE id = '{block_id}'")
    report = verify_offline(small_dir)
    (diff,) = [d for d in report.differences if d.id == block_id]
    (field,) = diff.fields
    assert field.field == "content" and field.log == content
    assert isinstance(field.state, str) and len(field.state) < 300 and "5000" in field.state


@pytest.mark.parametrize(
    ("sql", "entity", "kind"),
    [
        (
            "DELETE FROM blocks_fts_docsize WHERE id = (SELECT min(seq) FROM blocks)",
            "search index",
            "missing",
        ),
        ("DROP INDEX blocks_by_context", "schema", "missing"),
        ("UPDATE focus SET context_id = NULL", "focus", "changed"),
        ("PRAGMA user_version = 7", "schema", "changed"),
        ("DELETE FROM meta", "meta", "missing"),
    ],
)
def test_other_drift(sql: str, entity: str, kind: str, small_dir: Path) -> None:
    sqlite3_cli(small_dir / "state.db", sql)
    report = verify_offline(small_dir)
    assert report.state == "drift", report.summary
    assert any((d.entity, d.kind) == (entity, kind) for d in report.differences), report.summary


def test_many_differences_are_capped_but_counted(small_dir: Path) -> None:
    sqlite3_cli(small_dir / "state.db", "UPDATE blocks SET role = 'intruder'")
    blocks = query(small_dir / "state.db", "SELECT count(*) FROM blocks")[0][0]
    report = verify_paths(
        Paths.of(small_dir, small_dir.parent / "work"),
        trigger="test",
        mode="offline",
        copy=True,
        processes=False,
        cap=50,
    )
    assert report.differences_total == blocks
    assert len(report.differences) == 50


# --- live: Engine + Verifier, the watcher notices --------------------------------------------


async def wait_for_report(
    verifier: Verifier, after: str | None, accept: Callable[[VerifyReport], bool]
) -> VerifyReport:
    """The first new report `accept`s, polled for (the caller bounds the wait)."""
    while True:
        latest = verifier.latest()
        if latest is not None and latest.id != after and accept(latest):
            return latest
        await anyio.sleep(0.05)


async def test_live_drift_is_noticed_repaired_and_clean_again(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    config = config_for(state_dir, segment_bytes=64 * 1024)
    db = config.state_db
    statuses: list[str] = []
    async with Engine.open(config) as engine:
        await populate(engine, 800, writers=4)
        verifier = Verifier(config, engine, statuses.append)
        async with anyio.create_task_group() as tg:
            tg.start_soon(verifier.run_forever)
            first = await verifier.verify()
            assert first is not None and first.state == "ok", first and first.summary
            for case in drift_cases(db):
                before = verifier.latest()
                # The answered rows committed: their open transaction holds the write lock
                # (for up to COMMIT_DELAY_S) that the other program needs.
                await engine.caught_up()
                started = time.monotonic()
                await anyio.to_thread.run_sync(sqlite3_cli, db, case.sql)
                with anyio.fail_after(10):
                    report = await wait_for_report(
                        verifier,
                        before.id if before else None,
                        lambda r: r.trigger == "data_version",
                    )
                noticed = time.monotonic() - started
                assert report.state == "drift", (case.name, report.summary)
                find(report, case)
                assert noticed < 5, f"{case.name}: noticed after {noticed:.1f} s"
                assert verifier.status().last_state == "drift"

                result = await verifier.repair()
                assert result.quarantined_to is not None
                assert await anyio.Path(result.quarantined_to).exists()
                assert dump_state(db) == replay_dump(config.log_dir, tmp_path / "replay.db")
                assert fts_ok(db)
                clean = await verifier.verify()
                assert clean is not None
                assert clean.state == "ok", (case.name, clean.summary)
                # The engine keeps working on the new file.
                await populate(engine, engine.last_seq + 20, writers=2)
            status = verifier.status()
            assert status.repairs == 5 and status.drift_runs == 5
            tg.cancel_scope.cancel()
    assert any("DRIFT" in s for s in statuses)
    reports = sorted((state_dir / "reports").glob("repair-*.json"))
    assert len(reports) == 5
    summary = render_summary(read_report(reports[0]))  # what `timelinectl recovery-report ID` shows
    assert "rebuilt from the log while the daemon served" in summary, summary
    assert "had not stopped cleanly" not in summary and "clean-shutdown marker" not in summary


def test_state_ahead_of_the_log(small_dir: Path) -> None:
    """meta.last_seq pushed past the log's end: offline that is damage (records missing from
    the log's end, or the state edited: nothing tells which); the daemon, knowing what it
    committed, calls it drift."""
    db = small_dir / "state.db"
    head = int(str(query(db, "SELECT last_seq FROM meta")[0][0]))
    sqlite3_cli(db, "UPDATE meta SET last_seq = last_seq + 5")
    offline = verify_offline(small_dir)
    assert offline.state == "damaged"
    assert offline.chain is not None and offline.chain.damage is not None
    assert (offline.chain.damage.kind, offline.chain.damage.seq) == ("truncated", head + 1)
    daemon = verify_paths(
        Paths.of(small_dir, small_dir.parent / "work"),
        trigger="test",
        head=lambda: head,
        processes=False,
    )
    assert daemon.state == "drift", daemon.summary
    diff = next(d for d in daemon.differences if d.entity == "meta")
    assert {f.field for f in diff.fields} >= {"last_seq"}
    assert any("past the daemon's committed head" in note for note in daemon.notes)


@pytest.mark.parametrize("processes", [False, True])
def test_a_live_log_is_walked_to_the_head_at_the_snapshot(small_dir: Path, processes: bool) -> None:
    """Past the daemon's head the writer may be filling space it reserved while the walk reads:
    NULs read before a write, glued to the lines read after it, are what a walk to the log's end
    can meet on a live log. The daemon's walk stops at its head at the snapshot; at rest (offline)
    the same bytes are damage."""
    head = int(str(query(small_dir / "state.db", "SELECT last_seq FROM meta")[0][0]))
    last = sorted((small_dir / "log").iterdir())[-1]
    lines = last.read_bytes().splitlines(keepends=True)
    with last.open("ab") as f:
        f.write(b"\0" * 37 + lines[-1] + lines[-2])  # a NUL run off the sectors, a good line after
    daemon = verify_paths(
        Paths.of(small_dir, small_dir.parent / "work"),
        trigger="test",
        head=lambda: head,
        processes=processes,
    )
    assert daemon.state == "ok", daemon.summary
    assert daemon.chain is not None and daemon.chain.head_seq == head
    offline = verify_offline(small_dir)
    assert offline.state == "damaged", offline.summary
