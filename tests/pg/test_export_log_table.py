"""`timelinectl export-log` from a daemon whose log is the PostgreSQL table: ReadLog and GetStatus
served through `TableLogSource` (no segments), and the export cut by the file writer's rule.

The daemon here is the in-process one (tests/daemon/harness.py) on SQLite, its `App.log`
replaced by a `TableLogSource` over a database holding its log's lines: what ReadLog and
GetStatus answer then comes from the table only. Every append is its own batch, so the file
writer's own cut is the line-by-line rule the export must reproduce: byte-identical files."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tests.daemon.harness import inprocess_config, inprocess_daemon, short_tempdir
from tests.pg.logrows import Lender, insert_log
from timelined.auditlog.reader import read_lines
from timelined.auditlog.record import decode_content
from timelined.client import AsyncClient
from timelined.config import LogConfig
from timelined.ctl.main import main
from timelined.pgstore.logsource import TableLogSource

REPO = Path(__file__).resolve().parents[2]


def test_export_log_of_a_table_is_the_file_log(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "export"

    async def go() -> tuple[int, str, str, Path]:
        with short_tempdir() as base:
            config = inprocess_config(base, log=LogConfig(fsync="off", segment_bytes=4096))
            async with inprocess_daemon(base, config=config) as run:
                async with AsyncClient(run.socket_path) as client:
                    root = (await client.create_conversation("table")).root_context_id
                    for i in range(70):
                        await client.append_block(root, "user", f"{i} " + "z" * 150)
                    head = run.app.engine.last_seq
                    lines = list(read_lines(config.log_dir, 0, head))
                    await anyio.to_thread.run_sync(
                        insert_log, pg_dsn, [(decode_content(x[:-1]), x) for _, x in lines]
                    )
                    run.app.log = TableLogSource(Lender(pg_dsn))
                    status = await client.get_status()
                    assert status.log is not None and status.log.backend == "table"
                    assert status.log.segments is None and status.log.segment_bytes == 4096
                    assert status.log.stored_bytes > 0
                    page = await client.read_log(after_seq=0, limit=10)
                    assert page.segments is None and len(page.events) == 10
                capsys.readouterr()
                code = await anyio.to_thread.run_sync(
                    main, ["--socket", str(run.socket_path), "--json", "export-log", str(target)]
                )
                out, err = capsys.readouterr()
                copy = tmp_path / "daemon-log"
                copy.mkdir()
                for p in config.log_dir.iterdir():
                    (copy / p.name).write_bytes(p.read_bytes())
                return code, out, err, copy

    code, out, err, own = anyio.run(go)
    assert code == 0, err
    summary = json.loads(out)
    names = sorted(p.name for p in own.iterdir())
    assert len(names) > 2 and summary["segments"] == names
    match, mismatch, errors = filecmp.cmpfiles(target, own, names, shallow=False)
    assert (match, mismatch, errors) == (names, [], [])
    verified = subprocess.run(
        [sys.executable, str(REPO / "tools" / "verify_log.py"), str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0 and verified.stdout.startswith("OK 71 events")
