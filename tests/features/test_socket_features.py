"""Watch, export/import and metrics through every layer: a real daemon, the socket, the client
library and timelinectl.

- Export from one real daemon, import into a second: the same tree and blocks (new ids or kept
  ids), sources named; an edited export is refused with the reason; timelinectl export/import.
- A 100k-block export streams with flat memory: the daemon's RSS is measured while it sends.
- Watch: in order, no gap between the catch-up and live parts while writers append; a watcher
  that stops reading is dropped with SlowConsumer while the writer and other watchers go on.
- GetMetrics parses with prometheus_client's parser.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, closing
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.harness import DaemonProcess, inprocess_daemon, short_tempdir
from timelined import commands as cmd
from timelined import events as ev
from timelined.api.exchange import ExportDocument, ExportPart, join_parts
from timelined.api.model import Context, Conversation
from timelined.client import AsyncClient, Client, ExpectedMore
from timelined.config import LogConfig, default_config
from timelined.ctl.main import main as timelinectl
from timelined.errors import ConversationNotFound, ImportRejected, ShuttingDown, SlowConsumer
from timelined.ids import new_id, utc_now
from timelined.recovery.boot import boot
from timelined.recovery.marker import mark_clean
from timelined.writer.engine import Engine

TIMELINECTL = Path(sys.executable).with_name("timelinectl")
FAST = {"log": {"fsync": "off"}}


@pytest.fixture(scope="module")
def source() -> Iterator[DaemonProcess]:
    with short_tempdir() as base, DaemonProcess(base, **FAST) as proc:
        yield proc


@pytest.fixture(scope="module")
def target() -> Iterator[DaemonProcess]:
    with short_tempdir() as base, DaemonProcess(base, **FAST) as proc:
        yield proc


# --- export / import between two daemons -------------------------------------------------------


def build_conversation(tl: Client, name: str = "src") -> Conversation:
    """A conversation with three levels of sidebars, a merge, tags and a cross-reference, and
    another conversation's events interleaved (which the export must leave out)."""
    conv = tl.create_conversation(name, {"k": 1})
    other = tl.create_conversation(f"{name}-other")
    root = conv.root_context_id
    for i in range(5):
        tl.append_block(root, "user", f"root {i}", tokens_input=i, metadata={"i": i})
        tl.append_block(other.root_context_id, "user", f"noise {i}")
    side = tl.spawn_sidebar(root, "dig", inherit_last=2)
    deeper = tl.spawn_sidebar(side.id, "deeper", inherit_last=1)
    tl.append_block(side.id, "assistant", "side", sub_blocks=[{"type": "thought", "content": "t"}])
    tl.append_block(deeper.id, "tool", "deep")
    tl.merge_context(deeper.id, "deep done")
    tl.set_tags(side.id, ["a", "b"])
    tl.add_crossref(side.id, root, "see", note="n")
    tl.append_block(root, "user", "after the sidebars")
    return conv


def shape(tl: Client, conversation_id: str) -> list[Any]:
    """The tree and every block with ids replaced by their order, to compare across daemons.

    A merge block's timestamp is the time of the merge event, which an import re-creates (as
    it does the created/updated times of contexts): it is left out; every other block keeps
    the timestamp it was written with."""
    tree = tl.get_tree(conversation_id)
    index = {c.id: n for n, c in enumerate(tree)}
    out: list[Any] = []
    for c in tree:
        parent = index.get(c.parent_id or "")
        out.append((index[c.id], parent, c.status, c.reason, c.tags, c.block_count))
        out.append([(index[r.from_id], index[r.to_id], r.kind, r.note) for r in c.crossrefs])
        for b in tl.list_blocks(c.id, limit=1000).blocks:
            meta = {k: index.get(v, v) if isinstance(v, str) else v for k, v in b.metadata.items()}
            merge = "merged_context_id" in b.metadata
            stamp = None if merge else b.timestamp
            out.append((b.role, b.content, b.position, stamp, b.tokens_input, meta, b.sub_blocks))
    return out


def test_export_from_one_daemon_import_into_another(
    source: DaemonProcess, target: DaemonProcess
) -> None:
    with Client(source.socket_path) as a, Client(target.socket_path) as b:
        conv = build_conversation(a)
        want = shape(a, conv.id)
        parts = list(a.export_conversation(conv.id))
        assert parts[0].header is not None and parts[-1].end is not None
        assert [p.end for p in parts[:-1]] == [None] * (len(parts) - 1)
        doc = join_parts(parts)
        assert parts[-1].end.blocks == len(doc.blocks) == 9
        assert parts[-1].end.events == len(doc.events)
        assert all("noise" not in line and "-other" not in line for line in doc.events), (
            "another conversation's events leaked into the export"
        )

        copy = b.import_conversation(parts)  # mode "new"
        assert copy.id != conv.id and copy.name == "src" and copy.metadata == {"k": 1}
        assert copy.imported_from is not None
        assert copy.imported_from["conversation_id"] == conv.id
        assert copy.imported_from["head_hash"] == doc.header.source_head_hash
        assert shape(b, copy.id) == want
        new_ids = {c.id for c in b.get_tree(copy.id)}
        assert not new_ids & {c.id for c in a.get_tree(conv.id)}

        kept = b.import_conversation(doc, "keep")
        assert kept.id == conv.id
        assert [c.id for c in b.get_tree(conv.id)] == [c.id for c in a.get_tree(conv.id)]
        assert shape(b, kept.id) == want
        assert [x.id for x in b.list_blocks(conv.root_context_id, limit=100).blocks] == [
            x.id for x in a.list_blocks(conv.root_context_id, limit=100).blocks
        ]
        with pytest.raises(ImportRejected, match="already exists") as again:
            b.import_conversation(doc, "keep")
        assert "already exists" in again.value.params["reason"]

        # The target's log re-creates the history through normal events that name their
        # source: every imported event carries the hash of the one it reproduces.
        source_hashes = {msgspec.json.decode(line)["hash"] for line in doc.events}
        log = b.read_log(after_seq=0, limit=1000).events
        imported = [msgspec.json.decode(bytes(raw)) for raw in log]
        originals = {e["data"]["original_hash"] for e in imported if "original_hash" in e["data"]}
        assert originals <= source_hashes and len(originals) >= len(doc.blocks)


def test_an_edited_export_is_refused_with_the_reason(
    source: DaemonProcess, target: DaemonProcess
) -> None:
    with Client(source.socket_path) as a, Client(target.socket_path) as b:
        conv = build_conversation(a, "edited")
        doc = join_parts(a.export_conversation(conv.id))
        before = b.list_conversations(limit=1000).conversations

        blocks = list(doc.blocks)
        blocks[3] = msgspec.structs.replace(blocks[3], content="forged")
        with pytest.raises(ImportRejected) as refused:
            b.import_conversation(msgspec.structs.replace(doc, blocks=blocks))
        assert "does not match its events" in refused.value.params["reason"]
        assert refused.value.params["seq"] == blocks[3].seq

        events = list(doc.events)
        at = next(i for i, line in enumerate(events) if '"content":"root 2"' in line)
        events[at] = events[at].replace("root 2", "root X")
        with pytest.raises(ImportRejected) as refused:
            b.import_conversation(msgspec.structs.replace(doc, events=events))
        assert "hash mismatch" in refused.value.params["reason"]
        assert refused.value.params["seq"] == msgspec.json.decode(doc.events[at])["seq"]

        with pytest.raises(ImportRejected) as refused:  # the last event dropped
            b.import_conversation(msgspec.structs.replace(doc, events=doc.events[:-1]))
        assert "does not match its events" in refused.value.params["reason"]

        assert b.list_conversations(limit=1000).conversations == before  # nothing half-written
        with pytest.raises(ConversationNotFound):
            a.export_conversation("conv_nope")


def test_an_export_called_without_more_is_refused_not_truncated(source: DaemonProcess) -> None:
    """Its first part alone is only the header: ExpectedMore, and the connection goes on."""
    with Client(source.socket_path) as tl:
        conv = build_conversation(tl, "needs more")
        with pytest.raises(ExpectedMore, match="call it with more"):
            tl.call("io.timelined.Timeline.ExportConversation", {"id": conv.id})
        assert join_parts(tl.export_conversation(conv.id)).header.conversation.id == conv.id


def test_timelinectl_export_and_import(
    source: DaemonProcess, target: DaemonProcess, tmp_path: Path, capsys: Any
) -> None:
    with Client(source.socket_path) as a, Client(target.socket_path) as b:
        conv = build_conversation(a, "ctl")
        want = shape(a, conv.id)
        file = tmp_path / "conv.jsonl"

        def ctl(daemon: DaemonProcess, *argv: str) -> tuple[int, str, str]:
            capsys.readouterr()
            code = timelinectl(["--socket", str(daemon.socket_path), *argv])
            out, err = capsys.readouterr()
            return code, out, err

        code, _, err = ctl(source, "export", conv.id, "-o", str(file))
        assert code == 0, err
        lines = file.read_text().splitlines()
        parts = [msgspec.json.decode(line, type=ExportPart) for line in lines]
        assert parts[0].header is not None and parts[-1].end is not None
        assert not (tmp_path / "conv.jsonl.partial").exists()

        code, out, err = ctl(target, "--json", "import", str(file))
        assert code == 0, err
        imported = json.loads(out)["conversation"]
        assert imported["imported_from"]["conversation_id"] == conv.id
        assert shape(b, imported["id"]) == want

        # An edited file: the daemon refuses it and says why (exit 1, a named error).
        edited = tmp_path / "edited.jsonl"
        edited.write_text("\n".join(line.replace("root 3", "root 9") for line in lines) + "\n")
        code, _, err = ctl(target, "import", str(edited))
        assert code == 1 and "ImportRejected" in err and "hash mismatch" in err, err
        # A cut-off file: refused before it is sent (exit 65, bad data).
        cut = tmp_path / "cut.jsonl"
        cut.write_text("\n".join(lines[:-1]) + "\n")
        code, _, err = ctl(target, "import", str(cut))
        assert code == 65 and "incomplete" in err, err
        code, _, err = ctl(source, "export", "conv_nope", "-o", str(tmp_path / "x"))
        assert code == 1 and "ConversationNotFound" in err
        assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()

    # The real console script, with the shell's redirections: `export ID > file`,
    # `import --mode keep < file`.
    env = {**os.environ, "TIMELINED_SOCKET": str(source.socket_path)}
    piped = tmp_path / "piped.jsonl"
    with piped.open("wb") as out_file:
        run = subprocess.run(
            [str(TIMELINECTL), "export", conv.id], stdout=out_file, env=env, timeout=60
        )
    assert run.returncode == 0
    env["TIMELINED_SOCKET"] = str(target.socket_path)
    with piped.open("rb") as in_file:
        run = subprocess.run(
            [str(TIMELINECTL), "import", "--mode", "keep"],
            stdin=in_file,
            capture_output=True,
            env=env,
            timeout=60,
        )
    assert run.returncode == 0, run.stderr
    assert conv.id.encode() in run.stdout
    with Client(target.socket_path) as b:
        assert shape(b, conv.id) == want


# --- a 100k-block export streams with flat memory ----------------------------------------------

BIG_BLOCKS = 100_000


def build_state(state_dir: Path, blocks: int) -> str:
    """A state directory holding one conversation of `blocks` blocks, written offline through
    an Engine (log fsync off; the events committed as one command), then marked clean so that
    the daemon starts on the fast path. Returns the conversation's id."""
    config = default_config(state_dir, log=LogConfig(fsync="off"))

    async def go() -> str:
        booted = await anyio.to_thread.run_sync(boot, config)
        try:
            async with Engine.open(config, head=booted.head) as engine:
                conv_id, root = new_id("conv"), new_id("ctx")
                now = utc_now()
                events: list[ev.Event] = [
                    ev.ConversationCreated(
                        conversation_id=conv_id, name="big", root_context_id=root
                    )
                ]
                text = "lorem ipsum dolor sit amet, consectetur adipiscing elit"
                events += [
                    ev.BlockAppended(
                        block=ev.BlockData(
                            id=new_id("blk"),
                            context_id=root,
                            role="user" if i % 2 else "assistant",
                            content=f"block {i}: {text}",
                            timestamp=now,
                            metadata={"n": i},
                        )
                    )
                    for i in range(blocks)
                ]
                await engine.submit(cmd.ImportEvents(events=events, mode="new"))
            writer = engine.writer
            assert writer is not None
            w = writer.stats()
            mark_clean(config.marker_path, w.head_seq, w.head_hash, w.segment, w.segment_size)
        finally:
            booted.lock.release()
        return conv_id

    return anyio.run(go)


class _Counted(msgspec.Struct):
    events: list[msgspec.Raw] | None = None
    blocks: list[msgspec.Raw] | None = None


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _export_measuring_rss(tl: Client, pid: int, conversation_id: str) -> dict[str, Any]:
    """Stream the export (counting, keeping nothing) while sampling the daemon's VmRSS."""
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(_status_kb(pid, "VmRSS"))
            time.sleep(0.02)

    before = _status_kb(pid, "VmRSS")
    sampler = threading.Thread(target=sample)
    sampler.start()
    counted = msgspec.json.Decoder(_Counted)
    total = events = blocks = parts = 0
    t0 = time.monotonic()
    try:
        for raw in tl.stream(
            "io.timelined.Timeline.ExportConversation", {"id": conversation_id}, msgspec.Raw
        ):
            total += len(raw)
            parts += 1
            part = counted.decode(raw)
            events += len(part.events or ())
            blocks += len(part.blocks or ())
    finally:
        done.set()
        sampler.join()
    after = _status_kb(pid, "VmRSS")
    return {
        "bytes": total,
        "parts": parts,
        "events": events,
        "blocks": blocks,
        "seconds": time.monotonic() - t0,
        "before_kb": before,
        "peak_kb": max([*samples, after]),
        "after_kb": after,
        "hwm_kb": _status_kb(pid, "VmHWM"),
        "samples": len(samples),
    }


def test_a_100k_block_export_streams_with_flat_memory() -> None:
    with short_tempdir() as base:
        started = time.monotonic()
        conv_id = build_state(base / "state", BIG_BLOCKS)
        built = time.monotonic() - started
        with DaemonProcess(base, **FAST) as daemon:
            assert daemon.proc is not None
            pid = daemon.proc.pid
            with Client(daemon.socket_path) as tl:
                assert tl.get_status().boot.fast_path
                assert tl.get_tree(conv_id)[0].block_count == BIG_BLOCKS
                time.sleep(0.2)
                first = _export_measuring_rss(tl, pid, conv_id)
                second = _export_measuring_rss(tl, pid, conv_id)
                # SIGTERM with a watcher open: it is told, and the daemon stops cleanly.
                watching = tl.watch()
                assert daemon.stop() == 0, daemon.log()
                with pytest.raises(ShuttingDown):
                    next(watching)

    def mib(kb: int) -> str:
        return f"{kb / 1024:.1f} MiB"

    total = first["bytes"]
    growth = first["peak_kb"] - first["before_kb"]
    again = second["peak_kb"] - second["before_kb"]
    print(
        f"\n100k export: state built offline in {built:.1f}s; each export "
        f"{total / 2**20:.1f} MiB in {first['parts']} parts ({first['events']} events, "
        f"{first['blocks']} blocks), {first['seconds']:.1f}s and {second['seconds']:.1f}s; "
        f"daemon VmRSS {mib(first['before_kb'])} before, peak {mib(first['peak_kb'])} during "
        f"the first (+{mib(growth)}), peak {mib(second['peak_kb'])} during the second "
        f"(+{mib(again)}), {mib(second['after_kb'])} after; VmHWM {mib(second['hwm_kb'])}; "
        f"{first['samples'] + second['samples']} samples"
    )
    assert first["blocks"] == BIG_BLOCKS and first["events"] == BIG_BLOCKS + 1
    assert second["bytes"] > total * 0.99  # the same document again (its exported_at differs)
    assert total > 30 * 2**20  # the document is tens of MB ...
    assert growth * 1024 < total / 4  # ... the daemon grew by a fraction of it: some parts'
    assert growth < 24 * 1024  # worth, caches, thread arenas — not the document
    assert again < 12 * 1024  # and a second export of it adds next to nothing: no build-up
    assert second["hwm_kb"] - first["before_kb"] < 32 * 1024
    assert first["samples"] > 10


# --- watch -------------------------------------------------------------------------------------


def test_watch_catch_up_then_live_without_gap_while_writers_append(
    source: DaemonProcess,
) -> None:
    writers, per_writer = 8, 100

    async def go() -> None:
        async with AsyncClient(source.socket_path) as tl:
            conv = await tl.create_conversation("watched")
            quiet = await tl.create_conversation("quiet")
            root = conv.root_context_id
            for i in range(200):
                await tl.append_block(root, "user", f"before {i}")
            start = (await tl.get_status()).last_seq
            head_events = start  # every event of the log so far is caught up first

            async def writer(n: int) -> None:
                for i in range(per_writer):
                    ctx = root if i % 4 else quiet.root_context_id
                    await tl.append_block(ctx, "user", f"{n}-{i}")

            seen: list[int] = []
            mine: list[int] = []
            async with anyio.create_task_group() as tg:
                for n in range(writers):
                    tg.start_soon(writer, n)
                await anyio.sleep(0.05)  # the writers are under way when the watch starts
                with anyio.fail_after(30):
                    stream = await tl.watch(after_seq=0)
                    only = await tl.watch(conversation_id=conv.id, after_seq=start)
                    async with aclosing(stream), aclosing(only):
                        async for event in stream:
                            seen.append(event.seq)
                            if len(seen) == head_events + writers * per_writer:
                                break
                        want = writers * per_writer * 3 // 4
                        async for event in only:
                            assert event.type == "block.appended"
                            assert event.data["block"]["context_id"] == root
                            mine.append(event.seq)
                            if len(mine) == want:
                                break
            assert seen == list(range(1, len(seen) + 1))  # in order, no gap, no repeat
            assert mine == sorted(set(mine)) and mine[0] > start

    anyio.run(go)


def test_a_stalled_watcher_is_dropped_while_the_writer_and_others_go_on(
    source: DaemonProcess,
) -> None:
    with Client(source.socket_path) as tl:
        conv = tl.create_conversation("stall")
        root = conv.root_context_id
        start = tl.get_status().last_seq
        stalled = tl.watch()  # subscribed; then it reads nothing while the writer goes on
        healthy = tl.watch(after_seq=start)  # reads all along, in a thread
        got: list[int] = []
        total = 12_000  # more than a watcher's buffer (10 000 events) and its socket's

        def read_healthy() -> None:
            for event in healthy:
                got.append(event.seq)
                if len(got) == total:
                    return

        reader = threading.Thread(target=read_healthy)
        reader.start()
        t0 = time.monotonic()
        text = "x" * 200

        def append(i: int) -> None:
            tl.append_block(root, "user", f"{i} {text}")

        with ThreadPoolExecutor(32) as pool:
            list(pool.map(append, range(total)))
        wrote = time.monotonic() - t0
        reader.join(30)
        healthy.close()
        assert not reader.is_alive(), f"the healthy watcher got {len(got)} of {total}"
        assert got == list(range(start + 1, start + total + 1))
        metrics = tl.get_metrics()

        # The stalled watcher reads on: what its socket held, then the named error.
        seen: list[int] = []
        with pytest.raises(SlowConsumer) as dropped:
            for event in stalled:
                seen.append(event.seq)
        assert dropped.value.params["buffered"] > 10_000
        assert seen == list(range(start + 1, start + 1 + len(seen)))
        assert len(seen) < total
        print(
            f"\nstalled watcher: {total} appends by 32 clients in {wrote:.1f}s while one "
            f"watcher read nothing; it then got the {len(seen)} events its socket held and "
            f"SlowConsumer (buffered={dropped.value.params['buffered']})"
        )
        # It reconnects from the last seq it saw and loses nothing.
        last = seen[-1] if seen else start
        with closing(tl.watch(after_seq=last)) as resumed:
            rest = [e.seq for _, e in zip(range(start + total - last), resumed, strict=False)]
        assert rest == list(range(last + 1, start + total + 1))
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        assert families["timelined_watchers_dropped"].samples[0].value >= 1


def test_timelinectl_watch_prints_events_and_ends_on_ctrl_c(source: DaemonProcess) -> None:
    with Client(source.socket_path) as tl:
        conv = tl.create_conversation("ctl-watch")
        first = tl.append_block(conv.root_context_id, "user", "seen by the catch-up").seq
        env = {**os.environ, "TIMELINED_SOCKET": str(source.socket_path)}
        procs = {
            "human": subprocess.Popen(
                [str(TIMELINECTL), "watch", "--conversation", conv.id, "--after-seq", "0"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            ),
            "json": subprocess.Popen(
                [str(TIMELINECTL), "--json", "watch", "--after-seq", str(first - 1)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            ),
        }
        lines: dict[str, list[bytes]] = {}
        for name, proc in procs.items():
            assert proc.stdout is not None
            caught_up = 2 if name == "human" else 1  # with the conversation's creation
            lines[name] = [proc.stdout.readline() for _ in range(caught_up)]
        tl.append_block(conv.root_context_id, "assistant", "seen live")
        for name, proc in procs.items():
            assert proc.stdout is not None
            lines[name].append(proc.stdout.readline())
            proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean end, no traceback
            _, err = proc.communicate(timeout=20)
            assert proc.returncode == 0 and err == b"", (name, err)
    human = [line.decode() for line in lines["human"]]
    assert "conversation.created" in human[0] and "name=ctl-watch" in human[0]
    assert "block.appended" in human[1] and "user: seen by the catch-up" in human[1]
    assert human[1].split()[0] == str(first)
    assert "assistant: seen live" in human[2]
    events = [msgspec.json.decode(line) for line in lines["json"]]
    assert [e["seq"] for e in events] == [first, first + 1]
    assert events[1]["data"]["block"]["content"] == "seen live"


# --- metrics -----------------------------------------------------------------------------------


def test_get_metrics_parses_with_prometheus_client(
    source: DaemonProcess, tmp_path: Path, capsys: Any
) -> None:
    with Client(source.socket_path) as tl:
        conv = tl.create_conversation("metrics")
        tl.append_block(conv.root_context_id, "user", "counted")
        watch = tl.watch()  # one open watcher, counted
        text = tl.get_metrics()
        last_seq = tl.get_status().last_seq
        watch.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "timelined_events",
        "timelined_commands",
        "timelined_batch_size",
        "timelined_fsync_seconds",
        "timelined_queue_depth",
        "timelined_connections",
        "timelined_boot_verdict",
        "timelined_verify_runs",
        "timelined_watchers",
        "timelined_uptime_seconds",
    ):
        assert name in families, name
    assert families["timelined_last_seq"].samples[0].value == last_seq
    assert families["timelined_events"].samples[0].value >= 2
    assert families["timelined_watchers"].samples[0].value >= 1
    assert families["timelined_uptime_seconds"].samples[0].value > 0
    verdicts = {s.labels["verdict"]: s.value for s in families["timelined_boot_verdict"].samples}
    assert verdicts["clean"] == 1

    socket_arg = ["--socket", str(source.socket_path)]
    capsys.readouterr()
    assert timelinectl([*socket_arg, "metrics"]) == 0
    out = capsys.readouterr().out
    assert {f.name for f in text_string_to_metric_families(out)} >= set(families) - {
        "timelined_watchers"
    }
    prom = tmp_path / "timelined.prom"
    assert timelinectl([*socket_arg, "metrics", "--textfile", str(prom)]) == 0
    assert "timelined_events_total" in prom.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["timelined.prom"]


# --- the client library's streams, in process ---------------------------------------------------


def test_an_abandoned_stream_does_not_poison_the_connection_pool() -> None:
    async def go() -> None:
        with short_tempdir() as base:
            async with inprocess_daemon(base) as d, AsyncClient(d.socket_path, max_idle=1) as tl:
                conv = await tl.create_conversation("pool")
                for i in range(3):
                    await tl.append_block(conv.root_context_id, "user", str(i))
                for _ in range(3):  # left midway, each time
                    stream = await tl.watch(after_seq=0)
                    async with aclosing(stream):
                        async for _event in stream:
                            break
                    parts = await tl.export_conversation(conv.id)
                    async with aclosing(parts):
                        async for _part in parts:
                            break
                    # The next calls get a connection of their own, not one still streaming.
                    with anyio.fail_after(5):
                        assert (await tl.get_conversation(conv.id)).id == conv.id
                        whole = [p async for p in await tl.export_conversation(conv.id)]
                assert whole[-1].end is not None and whole[-1].end.blocks == 3
                assert d.app.watch.watchers == 0
                with pytest.raises(ConversationNotFound):
                    await tl.watch(conversation_id="conv_nope")
                doc: ExportDocument = join_parts(whole)
                copy = await tl.import_conversation(doc)
                assert copy.id != conv.id
                assert [c.block_count for c in await tl.get_tree(copy.id)] == [3]
                assert isinstance((await tl.get_tree(copy.id))[0], Context)

    anyio.run(go)
