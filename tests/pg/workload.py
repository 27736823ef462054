"""A log that exercises every event type, written by a real Engine (the rules decide the events).

`build_log(state_dir)` leaves a stopped SQLite daemon's state directory whose log holds
conversations, sidebars, pause / resume / merge / archive / restore / reparent / focus, tags,
cross-references added and revoked, retractions, an imported conversation, AppendBlocks batches,
unicode and SQL-ish content, and a few hundred events of the verifier's random mix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from tests.features.test_exchange import build_source, export
from tests.verifier.workload import ACTOR, populate
from timelined import commands as cmd
from timelined import exchange
from timelined.api.exchange import join_parts
from timelined.api.model import Context, Conversation
from timelined.api.timeline import AppendBlocksReply, AppendResult
from timelined.config import Config, LogConfig, default_config
from timelined.events import SubBlock
from timelined.state import queries as q
from timelined.writer.engine import Engine

# Text the SQL adapter must carry unchanged: placeholders, quotes, percent signs, backslashes,
# and characters from outside the BMP.
TRICKY = (
    "Grüße, 日本語, émoji 🎉🧠; SQL-ish: ? ?1 %s %(p1)s 50% 'quoted' \"double\" \\back\\slash "
    "-- not a comment; /* nor this */"
)


def config_for(state_dir: Path) -> Config:
    return default_config(state_dir, log=LogConfig(fsync="off"))


def _conv(result: object) -> Conversation:
    assert isinstance(result, Conversation)
    return result


def _ctx(result: object) -> Context:
    assert isinstance(result, Context)
    return result


async def scripted(engine: Engine) -> dict[str, Any]:
    """Every command, each at least once; returns the ids the parity tests read by."""
    source = await build_source(engine)
    root = source.root_context_id
    await engine.submit(
        cmd.UpdateConversation(id=source.id, name="renamed · 名前", metadata={"ü": [1, 2.5]}),
        ACTOR,
    )
    batch = await engine.submit(
        cmd.AppendBlocks(
            context_id=root,
            blocks=[
                cmd.NewBlock(role="user", content=TRICKY, metadata={"k": "v", "n": None}),
                cmd.NewBlock(
                    role="assistant",
                    content="answer with thought " * 20,
                    tokens_input=120,
                    tokens_output=4_000_000_000,  # past 32 bits: BIGINT on PostgreSQL
                    time_taken=1.25,
                    sub_blocks=[
                        SubBlock(type="thought", content="hmm 🤔", model="m1", tokens_input=3)
                    ],
                ),
                cmd.NewBlock(role="tool", content="", metadata={}),
            ],
        ),
        ACTOR,
    )
    assert isinstance(batch, AppendBlocksReply)
    tree = await engine.read(q.get_tree, source.id)
    side = next(c for c in tree if c.parent_id == root and c.status != "merged")
    # pause / resume, archive / restore, reparent, focus
    await engine.submit(cmd.PauseContext(id=side.id), ACTOR)
    await engine.submit(cmd.ResumeContext(id=side.id), ACTOR)
    spare = _ctx(await engine.submit(cmd.SpawnSidebar(parent_id=side.id, reason="spare"), ACTOR))
    await engine.submit(
        cmd.AppendBlock(context_id=spare.id, role="user", content="in the spare"), ACTOR
    )
    await engine.submit(cmd.ArchiveContext(id=spare.id, reason="not needed"), ACTOR)
    await engine.submit(cmd.RestoreContext(id=spare.id), ACTOR)
    await engine.submit(cmd.ReparentContext(id=spare.id, new_parent_id=root), ACTOR)
    await engine.submit(cmd.Focus(context_id=spare.id), ACTOR)
    # cross-references: one kept, one revoked
    kept = await engine.submit(
        cmd.AddCrossRef(from_id=spare.id, to_id=side.id, kind="related", note="ünïcode note"),
        ACTOR,
    )
    revoked = await engine.submit(cmd.AddCrossRef(from_id=root, to_id=spare.id, kind="temp"), ACTOR)
    await engine.submit(cmd.RevokeCrossRef(id=revoked.id), ACTOR)  # type: ignore[union-attr]
    # retractions: one block of the batch, one inherited by a sidebar spawned after it
    await engine.submit(cmd.RetractBlock(id=batch.blocks[0].id, reason="leaked a secret"), ACTOR)
    heir = _ctx(
        await engine.submit(cmd.SpawnSidebar(parent_id=root, reason="heir", inherit_last=4), ACTOR)
    )
    appended = await engine.submit(
        cmd.AppendBlock(
            context_id=heir.id,
            role="assistant",
            content="explicit id and timestamp",
            id="blk_explicit0001",
            timestamp="2026-01-02T03:04:05.000006Z",
        ),
        ACTOR,
    )
    assert isinstance(appended, AppendResult)
    await engine.submit(cmd.RetractBlock(id=appended.block.id), ACTOR)
    # an import of the source conversation (new ids), then its archive
    parts = await export(engine, source.id)
    document = join_parts(parts)
    records = exchange.verify_document(document)
    events = exchange.imported_events(records, document, "new")  # type: ignore[arg-type]
    imported = _conv(await engine.submit(cmd.ImportEvents(events=events, mode="new"), ACTOR))
    archived = _conv(
        await engine.submit(cmd.CreateConversation(name="to archive", metadata={"a": 1}), ACTOR)
    )
    await engine.submit(
        cmd.AppendBlock(context_id=archived.root_context_id, role="user", content="bye"), ACTOR
    )
    await engine.submit(cmd.Focus(context_id=archived.root_context_id), ACTOR)
    await engine.submit(cmd.ArchiveConversation(id=archived.id, reason="done"), ACTOR)
    await engine.submit(cmd.SetTags(context_id=root, tags=["ü", "tag two", "%"]), ACTOR)
    return {
        "conversations": [source.id, imported.id, archived.id],
        "crossrefs": [kept.id, revoked.id],  # type: ignore[union-attr]
        "retracted": [batch.blocks[0].id, appended.block.id],
    }


def build_log(state_dir: Path, random_events: int = 400) -> dict[str, Any]:
    """Run the scripted commands, then the random mix until the log holds `random_events`
    more events; the engine is closed (the state database matches the log)."""

    async def go() -> dict[str, Any]:
        async with Engine.open(config_for(state_dir)) as engine:
            ids = await scripted(engine)
            await populate(engine, engine.last_seq + random_events, writers=4, seed=11)
            return ids

    return anyio.run(go)
