"""A block one backend cannot store (PostgreSQL refuses NUL in text) is that append's own named
refusal: the appends batched with it are stored and answered (run on each backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio

from tests.stores import Store, open_engine
from timelined import commands as cmd
from timelined.api.model import Conversation
from timelined.api.timeline import AppendResult
from timelined.errors import InvalidArgument, TimelinedError
from timelined.state import queries as q


def test_a_refused_block_leaves_the_others_of_its_batch(store: Store, tmp_path: Path) -> None:
    config = store.config(tmp_path, log={"fsync": "always"})

    async def main() -> None:
        async with open_engine(config) as engine:
            conv = await engine.submit(cmd.CreateConversation(name="c"))
            assert isinstance(conv, Conversation)
            root = conv.root_context_id
            outcomes: dict[str, Any] = {}

            async def append(text: str) -> None:
                try:
                    outcomes[text] = await engine.submit(
                        cmd.AppendBlock(context_id=root, role="user", content=text)
                    )
                except TimelinedError as exc:
                    outcomes[text] = exc

            batches = engine.stats.batches
            texts = ["before", "a\x00b", "after"]
            async with anyio.create_task_group() as tg:  # queued together: one batch
                for text in texts:
                    tg.start_soon(append, text)
            assert engine.stats.batches - batches == 1, (outcomes, engine.stats.batches - batches)
            assert isinstance(outcomes["before"], AppendResult)
            assert isinstance(outcomes["after"], AppendResult)
            if store.backend == "postgresql":
                refused = outcomes["a\x00b"]
                assert isinstance(refused, InvalidArgument), refused
                assert "NUL" in refused.message
            else:
                assert isinstance(outcomes["a\x00b"], AppendResult)
            blocks, _ = await engine.read(q.list_blocks, root, limit=10)
            stored = [t for t in texts if isinstance(outcomes[t], AppendResult)]
            assert [b.content for b in blocks] == stored

    anyio.run(main)
