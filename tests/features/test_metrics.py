"""GetMetrics text parses with prometheus_client's parser and carries the counters."""

from __future__ import annotations

from pathlib import Path

import anyio
from prometheus_client.parser import text_string_to_metric_families

from timelined import commands as cmd
from timelined.api.model import Conversation
from timelined.api.reports import Report
from timelined.auditlog.source import FileLogSource
from timelined.config import LogConfig, default_config
from timelined.daemon.app import App
from timelined.daemon.metrics import render
from timelined.ids import utc_now
from timelined.varlink.server import VarlinkServer
from timelined.varlink.service import ServiceInfo
from timelined.writer.engine import Engine


def test_metrics_parse_and_count(tmp_path: Path) -> None:
    async def go() -> str:
        config = default_config(tmp_path / "s", log=LogConfig(fsync="always"))
        async with Engine.open(config) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="m"))
            assert isinstance(conv, Conversation)
            for i in range(10):
                await engine.submit(
                    cmd.AppendBlock(context_id=conv.root_context_id, role="user", content=str(i))
                )
            server = VarlinkServer(ServiceInfo(vendor="t", product="t", version="0", url="u"))
            report = Report(
                id="boot-x", kind="boot", version="0", started_at=utc_now(), verdict="recovered"
            )
            app = App(
                config=config,
                engine=engine,
                boot=report,
                server=server,
                started_at=utc_now(),
                log=FileLogSource(config.log_dir),
            )
            text = render(app)
            lag_now = engine.acked_seq - engine.indexed_seq
            commit_lag = engine.acked_seq - engine.committed_seq
            await engine.index_caught_up(5.0)
            return text, lag_now, commit_lag, render(app), engine.stats.inline_writes

    text, lag_now, commit_lag, text_after, inline_writes = anyio.run(go)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["timelined_events"].samples[0].value == 11
    assert families["timelined_last_seq"].samples[0].value == 11
    fsync = families["timelined_fsync_seconds"]
    count = next(s for s in fsync.samples if s.name == "timelined_fsync_seconds_count")
    assert count.value >= 1
    verdicts = {s.labels["verdict"]: s.value for s in families["timelined_boot_verdict"].samples}
    assert verdicts["recovered"] == 1 and verdicts["clean"] == 0
    assert families["timelined_verify_state"].type == "gauge"
    assert "timelined_watchers" in families
    assert families["timelined_search_index_lag_events"].samples[0].value == lag_now
    after = {f.name: f for f in text_string_to_metric_families(text_after)}
    assert after["timelined_search_index_lag_events"].samples[0].value == 0
    # The state's COMMIT follows the answers: the lag is what waited when the first text was
    # rendered; the search above committed it.
    assert families["timelined_state_commit_lag_events"].samples[0].value == commit_lag
    assert after["timelined_state_commit_lag_events"].samples[0].value == 0
    assert after["timelined_state_commits"].samples[0].value >= 1
    assert after["timelined_state_wal_checkpoints"].type == "counter"
    inline = after["timelined_writer_inline_writes"]
    assert inline.type == "counter" and inline.samples[0].value == inline_writes
