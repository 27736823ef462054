"""The verifier on PostgreSQL: the chain over the log table, drift in the state tables, repair.

The store is made the way an operator makes one: `migrate_to_pg` of a state directory a real
Engine wrote (SQLite backend). Tampering is done as the server's superuser with psycopg
directly, behind the code's back: the log table's triggers disabled for the change and enabled
again, as an attacker with the server's keys would.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import psycopg
import pytest

from tests.verifier.conftest import build, config_for
from timelined.api.verify import VerifyReport
from timelined.errors import LogDamaged
from timelined.migrate import migrate_to_pg
from timelined.pgstore.sql import PgConnection, connect
from timelined.verifier import Verifier
from timelined.verifier.pgrepair import rebuild_pg_state
from timelined.verifier.pgrun import PgTarget, verify_pg
from timelined.writer.engine import Engine

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def source_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~600 events of the verifier's realistic mix, written by a real Engine (SQLite)."""
    base = tmp_path_factory.mktemp("pgsource") / "state"
    build(base, 600)
    return base


@pytest.fixture
def store(source_base: Path, tmp_path: Path, pg_dsn: str) -> Iterator[str]:
    """A PostgreSQL store holding the source's history (migrated, verified)."""
    source = tmp_path / "state"
    shutil.copytree(source_base, source)
    result = migrate_to_pg(source, lambda: connect(pg_dsn), "test")
    assert result.target_check.state == "ok", result.target_check.summary
    yield pg_dsn


def superuser(dsn: str, *statements: str) -> None:
    """Run statements as the server's superuser, autocommit, behind the daemon's back."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)  # type: ignore[arg-type]


def fetch(dsn: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def verify(dsn: str, work: Path) -> VerifyReport:
    return verify_pg(lambda: connect(dsn), work, trigger="test", mode="offline")


def log_digest(dsn: str) -> str:
    """The log table's rows, hashed: what a repair must leave exactly as it was."""
    digest = hashlib.sha256()
    for seq, hash_, line in fetch(dsn, "SELECT seq, hash, line FROM log ORDER BY seq"):
        digest.update(f"{seq} {hash_} ".encode() + bytes(line))  # type: ignore[arg-type]
    return digest.hexdigest()


def test_chain_and_state_verify_on_a_migrated_store(store: str, tmp_path: Path) -> None:
    report = verify(store, tmp_path)
    assert report.state == "ok", report.summary
    assert report.chain is not None and report.chain.ok
    (head,) = fetch(store, "SELECT max(seq) FROM log")[0]
    assert report.chain.records == head == report.snapshot_seq == report.events_checked
    assert report.chain.head_hash == fetch(store, f"SELECT hash FROM log WHERE seq = {head}")[0][0]
    assert "GIN-indexed: ok" in report.search_index


def _forge(line: bytes, rehash: bool) -> bytes:
    """The line with one byte of its data changed; with `rehash`, its hash member recomputed
    so that the line is self-consistent (only the link to it breaks)."""
    content = line[:-1]
    at = content.index(b'"data":{') + 9
    changed = content[:at] + (b"X" if content[at : at + 1] != b"X" else b"Y") + content[at + 1 :]
    if rehash:
        body = changed[:-75]
        digest = hashlib.sha256(body + b"}").hexdigest().encode()
        changed = body + b',"hash":"' + digest + b'"}'
    return changed + b"\n"


@pytest.mark.parametrize(
    ("rehash", "bad_seq", "kind"),
    [(False, 100, "hash mismatch"), (True, 101, "broken link")],
    ids=["changed-line", "rehashed-forgery"],
)
def test_a_forged_line_in_the_table_is_found_and_named(
    store: str, tmp_path: Path, rehash: bool, bad_seq: int, kind: str
) -> None:
    ((line,),) = fetch(store, "SELECT line FROM log WHERE seq = 100")
    forged = _forge(bytes(line), rehash)  # type: ignore[arg-type]
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute("ALTER TABLE log DISABLE TRIGGER USER")
        # A careful forger keeps the row's hash column in step with its line.
        conn.execute(
            "UPDATE log SET line = %s, hash = %s WHERE seq = 100",
            (forged, forged[-67:-3].decode()),
        )
        conn.execute("ALTER TABLE log ENABLE TRIGGER USER")
    report = verify(store, tmp_path)
    assert report.state == "damaged", report.summary
    assert report.chain is not None and report.chain.damage is not None
    assert (report.chain.damage.seq, report.chain.damage.kind) == (bad_seq, kind)
    assert f"breaks at seq {bad_seq}" in report.summary
    assert report.chain.head_seq == bad_seq - 1  # the good chain ends before it


def test_a_changed_hash_column_is_found(store: str, tmp_path: Path) -> None:
    superuser(
        store,
        "ALTER TABLE log DISABLE TRIGGER USER",
        "UPDATE log SET hash = repeat('0', 64) WHERE seq = 50",
        "ALTER TABLE log ENABLE TRIGGER USER",
    )
    report = verify(store, tmp_path)
    assert report.state == "damaged"
    assert report.chain is not None and report.chain.damage is not None
    assert report.chain.damage.seq == 50 and "hash column" in report.chain.damage.detail


def test_a_disabled_trigger_on_the_log_is_flagged(store: str, tmp_path: Path) -> None:
    superuser(store, "ALTER TABLE log DISABLE TRIGGER USER")
    report = verify(store, tmp_path)
    assert report.state == "drift", report.summary
    assert any(d.entity == "schema" and "disabled" in (d.detail or "") for d in report.differences)


def test_drift_in_a_state_table_is_flagged_and_repair_rebuilds_it(
    store: str, tmp_path: Path
) -> None:
    ((block_id, block_seq),) = fetch(
        store, "SELECT id, seq FROM blocks ORDER BY seq LIMIT 1 OFFSET 20"
    )
    ((ctx_id,),) = fetch(store, "SELECT id FROM contexts ORDER BY id LIMIT 1")
    superuser(
        store,
        f"UPDATE blocks SET content = 'tampered' WHERE seq = {block_seq}",
        f"DELETE FROM contexts WHERE id = '{ctx_id}'",
        "UPDATE meta SET last_seq = last_seq + 5",
    )
    log_before = log_digest(store)
    report = verify(store, tmp_path)
    assert report.state == "drift", report.summary
    found = {(d.entity, d.id, d.kind): d for d in report.differences}
    changed = found[("block", str(block_id), "changed")]
    assert [f.field for f in changed.fields] == ["content"]
    assert changed.fields[0].state == "tampered"
    assert ("context", str(ctx_id), "missing") in found
    assert ("meta", "meta", "changed") in found
    assert any("past the daemon's committed head" in note for note in report.notes)

    with connect(store) as conn:
        rebuilt = rebuild_pg_state(conn)
    (head,) = fetch(store, "SELECT max(seq) FROM log")[0]
    assert rebuilt.last_seq == head and rebuilt.applied == head
    assert log_digest(store) == log_before  # the log table was only read
    after = verify(store, tmp_path)
    assert after.state == "ok", after.summary


def test_a_failed_repair_leaves_the_old_state(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing half-done: a rebuild that fails midway rolls back to the state it found."""
    superuser(store, "UPDATE blocks SET role = 'x' WHERE seq = (SELECT min(seq) FROM blocks)")
    before = fetch(store, "SELECT count(*), sum(seq) FROM blocks")
    import timelined.verifier.pgrepair as pgrepair

    calls = 0
    real_apply = pgrepair.apply

    def failing_apply(conn: PgConnection, record: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 300:
            raise OSError(5, "injected failure")
        real_apply(conn, record)  # type: ignore[arg-type]

    monkeypatch.setattr(pgrepair, "apply", failing_apply)
    with connect(store) as conn, pytest.raises(OSError, match="injected"):
        rebuild_pg_state(conn)
    assert fetch(store, "SELECT count(*), sum(seq) FROM blocks") == before
    assert verify(store, tmp_path).state == "drift"  # still the drift it had


def test_offline_verify_on_a_pg_store_exits_by_verdict(store: str) -> None:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "timelined", "verify", "--dsn", store, "--json"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["state"] == "ok"
    superuser(
        store,
        "UPDATE conversations SET name = 'renamed' WHERE id = (SELECT min(id) FROM conversations)",
    )
    drift = run()
    assert drift.returncode == 1, drift.stderr
    assert json.loads(drift.stdout)["state"] == "drift"
    human = subprocess.run(
        [sys.executable, "-m", "timelined", "verify", "--dsn", store],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert human.returncode == 1
    assert "records in the log table" in human.stdout and "name is" in human.stdout


def test_a_dsn_with_a_password_is_refused(pg_dsn: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "timelined", "verify", "--dsn", pg_dsn + " password=secret"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "password" in out.stderr and "secret" not in out.stderr + out.stdout


@pytest.mark.parametrize("processes", [True, False], ids=["child", "thread"])
def test_the_daemons_verifier_runs_on_pg_and_repairs(
    store: str, source_base: Path, tmp_path: Path, processes: bool
) -> None:
    """The entry point the daemon's boot calls on PostgreSQL: `Verifier(..., pg=connect)`:
    its runs report drift as on SQLite, its repair rebuilds the tables and writes a report."""
    state_dir = tmp_path / "daemon"
    shutil.copytree(source_base, state_dir)
    (head,) = fetch(store, "SELECT max(seq) FROM log")[0]
    report_paths: list[str] = []

    async def go() -> None:
        async with Engine.open(config_for(state_dir)) as engine:
            verifier = Verifier(engine.config, engine, pg=PgTarget(store), processes=processes)
            first = await verifier.verify()
            assert first is not None and first.state == "ok", first and first.summary
            superuser(
                store, "UPDATE blocks SET role = 'x' WHERE seq = (SELECT max(seq) FROM blocks)"
            )
            drift = await verifier.verify()
            assert drift is not None and drift.state == "drift"
            assert drift.differences[0].entity == "block"
            repaired = await verifier.repair()
            assert repaired.events_replayed == head and repaired.quarantined_to is None
            report_paths.append(repaired.report_path)
            after = await verifier.verify()
            assert after is not None and after.state == "ok", after and after.summary
            assert verifier.status().repairs == 1

    anyio.run(go)
    assert Path(report_paths[0]).is_file()


def test_pages_are_bounded_in_rows_and_bytes_and_cover_the_table(store: str) -> None:
    """Keyset pages: every row once, in key order; a page never holds more than `rows` rows
    nor (past its first row) more than `max_bytes`."""
    from timelined.verifier.pgrows import pages

    (count,) = fetch(store, "SELECT count(*) FROM blocks")[0]
    with connect(store) as conn:
        by_rows = list(pages(conn, "blocks", ("seq", "content"), "seq", rows=7))
        by_bytes = list(pages(conn, "blocks", ("seq", "content"), "seq", max_bytes=200))
    for split in (by_rows, by_bytes):
        seqs = [row[0] for page in split for row in page]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)) == count
    assert max(len(page) for page in by_rows) == 7
    for page in by_bytes:
        sizes = [len(str(row[0])) + len(str(row[1]).encode()) for row in page]
        assert len(page) == 1 or sum(sizes) <= 200
    assert any(len(page) > 1 for page in by_bytes) and len(by_bytes) > count // 10


def test_a_deleted_head_row_is_drift_and_repair_restores_it(store: str, tmp_path: Path) -> None:
    superuser(store, "DELETE FROM meta", "DELETE FROM focus")
    report = verify(store, tmp_path)
    assert report.state == "drift", report.summary
    kinds = {(d.entity, d.kind) for d in report.differences}
    assert {("meta", "missing"), ("focus", "missing")} <= kinds
    with connect(store) as conn:
        rebuilt = rebuild_pg_state(conn)
    assert rebuilt.old_last_seq is None
    after = verify(store, tmp_path)
    assert after.state == "ok", after.summary


def test_repair_refuses_a_damaged_log_table_and_keeps_the_state(store: str) -> None:
    """A rebuild never builds a state from a log it has not verified: a changed line stops it,
    named, and the transaction leaves the state tables as they were."""
    ((line,),) = fetch(store, "SELECT line FROM log WHERE seq = 30")
    superuser(store, "UPDATE blocks SET role = 'drifted' WHERE seq = (SELECT max(seq) FROM blocks)")
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute("ALTER TABLE log DISABLE TRIGGER USER")
        conn.execute(
            "UPDATE log SET line = %s WHERE seq = 30",
            (_forge(bytes(line), rehash=False),),  # type: ignore[arg-type]
        )
        conn.execute("ALTER TABLE log ENABLE TRIGGER USER")
    before = fetch(store, "SELECT seq, role FROM blocks ORDER BY seq")
    with connect(store) as conn, pytest.raises(LogDamaged) as damaged:
        rebuild_pg_state(conn)
    assert damaged.value.params["seq"] == 30
    assert fetch(store, "SELECT seq, role FROM blocks ORDER BY seq") == before
