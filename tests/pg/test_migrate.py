"""`timelined migrate --from sqlite --to DSN`: a real daemon's state directory (SQLite backend)
into PostgreSQL, verified on both sides; refusals leave the target exactly as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.daemon.harness import DaemonProcess, serving, short_tempdir
from tests.pg.test_verify_pg import REPO, fetch, superuser, verify
from tests.verifier.conftest import config_for
from tests.verifier.workload import ACTOR
from timelined import commands as cmd
from timelined.api.verify import VerifyProgress
from timelined.client_sync import Client
from timelined.commands import NewBlock
from timelined.errors import LogDamaged, MigrationFailed
from timelined.migrate import migrate_to_pg
from timelined.pgstore.sql import PgConnection, connect
from timelined.writer.engine import Engine


def tables(dsn: str) -> list[str]:
    rows = fetch(
        dsn,
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema() ORDER BY table_name",
    )
    return [str(r[0]) for r in rows]


def migrate_cli(state_dir: Path, dsn: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "timelined",
            "migrate",
            "--from",
            "sqlite",
            "--to",
            dsn,
            "--state-dir",
            str(state_dir),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def daemon_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state directory of a real daemon (`timelined serve`, SQLite), stopped cleanly."""
    kept = tmp_path_factory.mktemp("daemon") / "state"
    with short_tempdir() as base:
        proc = DaemonProcess(base).start()
        try:
            with Client(proc.socket_path) as c:
                _history(c)
        finally:
            code = proc.stop()
        assert code == 0, proc.log()
        shutil.copytree(proc.state_dir, kept)
    return kept


def _history(c: Client) -> None:
    """Every kind of event the state has a table for."""
    conv = c.create_conversation("migrate me", metadata={"k": "v"})
    root = conv.root_context_id
    c.append_blocks(root, [NewBlock("user", f"hello {i} zebrafish") for i in range(30)])
    side = c.spawn_sidebar(root, "a side", inherit_last=3)
    c.append_block(side.id, "assistant", "in the sidebar", tokens_input=3, time_taken=0.5)
    c.set_tags(side.id, ["x", "y"])
    c.merge_context(side.id, summary="merged")
    other = c.create_conversation("second")
    c.add_crossref(root, other.root_context_id, "related", note="see")
    blocks = c.list_blocks(root).blocks
    c.retract_block(blocks[2].id, reason="oops")
    c.archive_conversation(other.id, reason="done")
    c.update_conversation(conv.id, name="renamed")


def test_migrate_a_real_daemons_state_dir_verifies_on_both_sides(
    daemon_dir: Path, pg_dsn: str, tmp_path: Path
) -> None:
    out = migrate_cli(daemon_dir, pg_dsn, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    head = result["head_seq"]
    assert head >= 40 and result["events"] == head
    assert result["source_chain"]["ok"] and result["target_check"]["state"] == "ok"
    assert result["target_check"]["events_checked"] == head
    progress = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert {p["phase"] for p in progress} >= {"source chain", "copy", "replay", "chain"}
    # The database stands on its own: verified again from outside, the log table holds the
    # source's exact lines.
    report = verify(pg_dsn, tmp_path)
    assert report.state == "ok" and report.snapshot_seq == head, report.summary
    lines = b"".join(bytes(r[0]) for r in fetch(pg_dsn, "SELECT line FROM log ORDER BY seq"))  # type: ignore[arg-type]
    source = b"".join(p.read_bytes() for p in sorted((daemon_dir / "log").glob("*.jsonl")))
    assert lines == source
    ((name,),) = fetch(pg_dsn, "SELECT name FROM conversations WHERE name = 'renamed'")
    assert name == "renamed"


def test_migrate_refuses_a_non_empty_target(daemon_dir: Path, pg_dsn: str) -> None:
    superuser(pg_dsn, "CREATE TABLE unrelated (x int)", "INSERT INTO unrelated VALUES (1)")
    steps: list[VerifyProgress] = []
    with pytest.raises(MigrationFailed) as refused:
        migrate_to_pg(daemon_dir, lambda: connect(pg_dsn), "test", progress=steps.append)
    assert refused.value.side == "target" and "not empty" in refused.value.message
    assert steps == []  # refused at once, before the source's walk
    assert "unrelated" in refused.value.message
    assert tables(pg_dsn) == ["unrelated"]
    out = migrate_cli(daemon_dir, pg_dsn, "--json")
    assert out.returncode == 73
    error = json.loads(out.stderr.splitlines()[-1])
    assert error["error"] == "io.timelined.Admin.MigrationFailed"
    assert error["parameters"]["side"] == "target"
    assert tables(pg_dsn) == ["unrelated"]


def test_migrate_of_a_migrated_database_is_refused(daemon_dir: Path, pg_dsn: str) -> None:
    assert migrate_cli(daemon_dir, pg_dsn).returncode == 0
    again = migrate_cli(daemon_dir, pg_dsn)
    assert again.returncode == 73 and "not empty" in again.stderr


def test_a_damaged_source_is_refused_before_anything_is_written(
    daemon_dir: Path, pg_dsn: str, tmp_path: Path
) -> None:
    source = tmp_path / "state"
    shutil.copytree(daemon_dir, source)
    segment = sorted((source / "log").glob("*.jsonl"))[0]
    data = bytearray(segment.read_bytes())
    at = data.index(b'"name":"migrate me"') + 9
    data[at] = ord("M")
    segment.write_bytes(bytes(data))
    with pytest.raises(LogDamaged) as damaged:
        migrate_to_pg(source, lambda: connect(pg_dsn), "test")
    assert damaged.value.params["seq"] == 1
    assert tables(pg_dsn) == []
    assert migrate_cli(source, pg_dsn).returncode == 1


def test_a_migration_that_fails_midway_leaves_the_target_empty(
    daemon_dir: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server drops the migration's connection (an administrator's pg_terminate_backend)
    during its third batch: nothing of it stays, the schema included (one transaction)."""
    import timelined.migrate as migrate

    monkeypatch.setattr(migrate, "BATCH_LINES", 7)  # several batches before the failure
    calls = 0
    real = migrate.insert_lines

    def killed_midway(conn: PgConnection, *args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            superuser(pg_dsn, f"SELECT pg_terminate_backend({conn.raw.info.backend_pid})")
        real(conn, *args)

    monkeypatch.setattr(migrate, "insert_lines", killed_midway)
    with pytest.raises(MigrationFailed) as failed:
        migrate_to_pg(daemon_dir, lambda: connect(pg_dsn), "test")
    assert failed.value.side == "copy" and "nothing was committed" in failed.value.message
    assert calls == 3
    assert tables(pg_dsn) == []  # the schema went with the rest: one transaction


def test_a_migration_whose_check_fails_is_rolled_back(
    daemon_dir: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target is checked before the COMMIT: a state the replay disagrees with is never
    committed (here a state change slipped in by a broken `apply` for one event)."""
    import timelined.migrate as migrate

    real = migrate.apply

    def wrong_apply(conn: object, record: object) -> None:
        real(conn, record)  # type: ignore[arg-type]
        if getattr(record, "seq", 0) == 5:
            conn.execute("UPDATE conversations SET archive_reason = 'wrong'")  # type: ignore[attr-defined]

    monkeypatch.setattr(migrate, "apply", wrong_apply)
    with pytest.raises(MigrationFailed) as failed:
        migrate_to_pg(daemon_dir, lambda: connect(pg_dsn), "test")
    assert failed.value.side == "verify" and "drift" in failed.value.message
    assert tables(pg_dsn) == []


def test_a_running_daemons_directory_is_refused(pg_dsn: str) -> None:
    with serving() as proc:
        out = migrate_cli(proc.state_dir, pg_dsn)
    assert out.returncode == 66 and "running" in out.stderr
    assert tables(pg_dsn) == []


def test_a_history_postgresql_cannot_hold_is_refused_naming_the_event(
    pg_dsn: str, tmp_path: Path
) -> None:
    """SQLite stores U+0000 in text, PostgreSQL cannot: the migration names the event and
    commits nothing."""
    state_dir = tmp_path / "state"

    async def write() -> int:
        async with Engine.open(config_for(state_dir)) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="nul"), ACTOR)
            await engine.submit(
                cmd.AppendBlock(context_id=conv.root_context_id, role="user", content="a\x00b"),
                ACTOR,
            )
            return engine.last_seq

    seq = anyio.run(write)
    with pytest.raises(MigrationFailed) as refused:
        migrate_to_pg(state_dir, lambda: connect(pg_dsn), "test")
    assert refused.value.side == "copy" and f"seq {seq}" in refused.value.message
    assert "NUL" in refused.value.message
    assert tables(pg_dsn) == []
