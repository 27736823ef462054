"""GetHistory across three levels of sidebars with merges, against a model in the test."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from timelined import commands as cmd
from timelined.api.model import Context, Conversation
from timelined.config import LogConfig, default_config
from timelined.state import queries as q
from timelined.writer.engine import Engine


@dataclass
class Node:
    """The model: own blocks, and the spawn reference (parent, inherit_last, parent's count)."""

    own: list[str] = field(default_factory=list)
    parent: str | None = None
    inherit: int = 0
    parent_count: int = 0


def model_history(
    nodes: dict[str, Node], cid: str, upto: int | None = None
) -> list[tuple[str, str]]:
    """(source context, content), oldest first: inherited window, then own blocks."""
    node = nodes[cid]
    own = node.own if upto is None else node.own[:upto]
    inherited: list[tuple[str, str]] = []
    if node.parent is not None and node.inherit > 0:
        inherited = model_history(nodes, node.parent, node.parent_count)[-node.inherit :]
    return inherited + [(cid, c) for c in own]


def test_history_matches_the_model_across_three_levels_with_merges(tmp_path: Path) -> None:
    rng = random.Random(7)

    async def go() -> None:
        config = default_config(tmp_path / "s", log=LogConfig(fsync="off"))
        async with Engine.open(config) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="h"))
            assert isinstance(conv, Conversation)
            nodes: dict[str, Node] = {conv.root_context_id: Node()}
            levels: dict[str, int] = {conv.root_context_id: 0}

            async def append(cid: str, n: int) -> None:
                for _ in range(n):
                    text = f"{cid[-4:]}-{len(nodes[cid].own)}"
                    await engine.submit(cmd.AppendBlock(context_id=cid, role="user", content=text))
                    nodes[cid].own.append(text)

            await append(conv.root_context_id, 6)
            for _ in range(30):
                live = [c for c in nodes if levels[c] < 3]
                deepest = max(levels[c] for c in live)
                # Lean towards the deepest contexts so the tree reaches three levels.
                pool = [c for c in live if levels[c] == deepest] if rng.random() < 0.5 else live
                parent = rng.choice(pool)
                ctx_now = await engine.read(q.get_context, parent)
                if ctx_now.status not in ("active", "paused"):
                    continue
                inherit = rng.choice([0, 1, 3, 50])
                child = await engine.submit(
                    cmd.SpawnSidebar(parent_id=parent, reason="r", inherit_last=inherit)
                )
                assert isinstance(child, Context)
                nodes[child.id] = Node(
                    parent=parent, inherit=inherit, parent_count=len(nodes[parent].own)
                )
                levels[child.id] = levels[parent] + 1
                await append(child.id, rng.randint(0, 4))
                await append(parent, rng.randint(0, 2))  # the parent moves on after the spawn
                if rng.random() < 0.4:
                    await engine.submit(cmd.MergeContext(id=child.id, summary=f"sum {child.id}"))
                    nodes[parent].own.append(f"sum {child.id}")  # the merge block
            assert max(levels.values()) >= 3, "the workload must reach three levels of sidebars"
            assert any(c.startswith("sum ") for n in nodes.values() for c in n.own), "and merge"
            for cid in nodes:
                got = await engine.read(q.history, cid)
                assert [(h.source_context_id, h.block.content) for h in got] == model_history(
                    nodes, cid
                ), cid
                assert all(h.inherited == (h.source_context_id != cid) for h in got)
                for limit in (1, 3, 10):
                    tail = await engine.read(q.history, cid, limit=limit)
                    assert [h.block.content for h in tail] == [
                        c for _, c in model_history(nodes, cid)[-limit:]
                    ]

    anyio.run(go)
