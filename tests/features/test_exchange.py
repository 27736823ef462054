"""Export from one engine, import into another: same tree and blocks; edits are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from timelined import commands as cmd
from timelined import exchange
from timelined.api.exchange import ExportDocument, ExportPart, join_parts
from timelined.api.model import Context, Conversation
from timelined.auditlog.source import FileLogSource
from timelined.config import Config, LimitsConfig, LogConfig, default_config
from timelined.errors import ImportRejected, LimitExceeded
from timelined.state import queries as q
from timelined.writer.engine import Engine


def cfg(path: Path) -> Config:
    return default_config(path, log=LogConfig(fsync="off"))


async def build_source(engine: Engine) -> Conversation:
    conv = await engine.submit(cmd.CreateConversation(name="src", metadata={"k": 1}))
    assert isinstance(conv, Conversation)
    root = conv.root_context_id
    for i in range(5):
        await engine.submit(cmd.AppendBlock(context_id=root, role="user", content=f"root {i}"))
    side = await engine.submit(cmd.SpawnSidebar(parent_id=root, reason="dig", inherit_last=2))
    assert isinstance(side, Context)
    deeper = await engine.submit(cmd.SpawnSidebar(parent_id=side.id, reason="deeper"))
    assert isinstance(deeper, Context)
    await engine.submit(cmd.AppendBlock(context_id=side.id, role="assistant", content="side"))
    await engine.submit(cmd.AppendBlock(context_id=deeper.id, role="tool", content="deep"))
    await engine.submit(cmd.MergeContext(id=deeper.id, summary="deep done"))
    await engine.submit(cmd.SetTags(context_id=side.id, tags=["a", "b"]))
    await engine.submit(cmd.AddCrossRef(from_id=side.id, to_id=root, kind="see"))
    other = await engine.submit(cmd.CreateConversation(name="other"))  # not exported
    assert isinstance(other, Conversation)
    await engine.submit(
        cmd.AppendBlock(context_id=other.root_context_id, role="user", content="noise")
    )
    return conv


async def export(engine: Engine, conversation_id: str) -> list[ExportPart]:
    def run(conn: Any) -> list[ExportPart]:
        return list(
            exchange.export_parts(
                conn,
                FileLogSource(engine.config.log_dir),
                conversation_id,
                engine.last_seq,
                engine.last_hash,
            )
        )

    parts: list[ExportPart] = await engine.read(run)
    return parts


def shape(conn: Any, conversation_id: str) -> list[tuple[Any, ...]]:
    """The tree and blocks with ids replaced by their order, to compare across daemons."""
    tree = q.get_tree(conn, conversation_id)
    index = {c.id: n for n, c in enumerate(tree)}
    out: list[tuple[Any, ...]] = []
    for c in tree:
        out.append((index[c.id], index.get(c.parent_id or ""), c.status, c.reason, c.tags))
        blocks, _ = q.list_blocks(conn, c.id, limit=100)
        out += [(b.role, b.content, b.position) for b in blocks]
    return out


@pytest.mark.parametrize("mode", ["new", "keep"])
def test_export_then_import_gives_the_same_tree(tmp_path: Path, mode: str) -> None:
    async def go() -> None:
        async with Engine.open(cfg(tmp_path / "a")) as a:
            conv = await build_source(a)
            parts = await export(a, conv.id)
            want = await a.read(shape, conv.id)
        doc = join_parts(parts)
        assert parts[-1].end is not None and parts[-1].end.blocks == len(doc.blocks) == 8
        records = exchange.verify_document(doc)
        async with Engine.open(cfg(tmp_path / "b")) as b:
            events = exchange.imported_events(records, doc, mode)  # type: ignore[arg-type]
            imported = await b.submit(cmd.ImportEvents(events=events, mode=mode))
            assert isinstance(imported, Conversation)
            assert (imported.id == conv.id) == (mode == "keep")
            assert imported.imported_from is not None
            assert imported.imported_from["conversation_id"] == conv.id
            assert await b.read(shape, imported.id) == want
            if mode == "keep":
                with pytest.raises(ImportRejected, match="already exists"):
                    await b.submit(cmd.ImportEvents(events=events, mode=mode))

    anyio.run(go)


def test_an_edited_export_is_refused_with_the_reason(tmp_path: Path) -> None:
    async def go() -> ExportDocument:
        async with Engine.open(cfg(tmp_path / "a")) as a:
            conv = await build_source(a)
            return join_parts(await export(a, conv.id))

    doc = anyio.run(go)
    # An edited block in the document: it no longer matches its events.
    blocks = list(doc.blocks)
    blocks[0] = msgspec.structs.replace(blocks[0], content="forged")
    with pytest.raises(ImportRejected, match="does not match its events"):
        exchange.verify_document(msgspec.structs.replace(doc, blocks=blocks))
    # An edited event: its hash no longer matches its bytes.
    events = list(doc.events)
    events[2] = events[2].replace("root 1", "root X")
    with pytest.raises(ImportRejected, match="hash mismatch") as info:
        exchange.verify_document(msgspec.structs.replace(doc, events=events))
    assert info.value.params["seq"] == 3
    # An edited tree in the header.
    tree = list(doc.header.contexts)
    tree[1] = msgspec.structs.replace(tree[1], reason="other")
    header = msgspec.structs.replace(doc.header, contexts=tree)
    with pytest.raises(ImportRejected, match="tree"):
        exchange.verify_document(msgspec.structs.replace(doc, header=header))
    # A dropped event.
    with pytest.raises(ImportRejected):
        exchange.verify_document(msgspec.structs.replace(doc, events=doc.events[:-1]))


def test_an_import_is_held_to_this_daemons_crossref_bound(tmp_path: Path) -> None:
    """References made under a larger bound elsewhere: the import is refused by name and
    leaves nothing, as the AddCrossRef calls that would make them here are."""

    async def go() -> None:
        async with Engine.open(cfg(tmp_path / "a")) as a:
            conv = await build_source(a)
            root = conv.root_context_id
            for _ in range(3):  # the root: ~2.4 KB of references, 1 under 1,500 bytes
                side = await a.submit(cmd.SpawnSidebar(parent_id=root, reason="more"))
                assert isinstance(side, Context)
                await a.submit(
                    cmd.AddCrossRef(from_id=side.id, to_id=root, kind="x", note="n" * 600)
                )
            doc = join_parts(await export(a, conv.id))
        records = exchange.verify_document(doc)
        small = default_config(
            tmp_path / "b",
            log=LogConfig(fsync="off"),
            limits=LimitsConfig(max_crossref_bytes_per_context=1500),
        )
        async with Engine.open(small) as b:
            events = exchange.imported_events(records, doc, "new")  # type: ignore[arg-type]
            head = b.last_seq
            with pytest.raises(LimitExceeded) as refused:
                await b.submit(cmd.ImportEvents(events=events, mode="new"))
            assert refused.value.params["limit"].startswith(
                "limits.max_crossref_bytes_per_context (the cross-references of "
            )
            assert b.last_seq == head
            listed = await b.read(
                lambda conn: q.list_conversations(conn, include_archived=True, limit=9, after=None)
            )
            assert listed == ([], None)
        async with Engine.open(cfg(tmp_path / "c")) as c:  # within the default bound it imports
            imported = await c.submit(cmd.ImportEvents(events=events, mode="new"))
            assert isinstance(imported, Conversation)

    anyio.run(go)
