"""RetractBlock on a real daemon: the block leaves history, ListBlocks and search, stays in the
log, GetBlock and exports; an import reproduces the retraction; the verifier's replay agrees.
On each storage backend (the contract suite: tests/stores.py)."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from tests.conftest import Stores
from tests.daemon.harness import DaemonProcess, serving
from tests.stores import BACKENDS, Store
from timelined.client import AsyncClient
from timelined.commands import NewBlock
from timelined.errors import BlockNotFound, InvalidTransition


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest, stores: Stores) -> Iterator[tuple[DaemonProcess, Store]]:
    store = stores.new(request.param)
    with serving(**store.overrides()) as proc:
        yield proc, store


def test_a_retracted_block_leaves_history_blocks_and_search(
    served: tuple[DaemonProcess, Store],
) -> None:
    daemon, store = served

    async def go() -> None:
        async with AsyncClient(daemon.socket_path) as c:
            conv = await c.create_conversation("retract")
            root = conv.root_context_id
            done = await c.append_blocks(
                root, [NewBlock("user", f"word{i} zebrafish") for i in range(4)]
            )
            ids = [b.id for b in done]
            side = await c.spawn_sidebar(root, "side", inherit_last=2)
            await c.append_block(side.id, "user", "in the sidebar")

            gone = await c.retract_block(ids[3], reason="popped")
            assert gone.id == ids[3]
            assert (await c.retract_block(ids[3])).id == ids[3]  # a retry: no second event

            history = [h.block.id for h in await c.get_history(root)]
            assert history == ids[:3]
            assert [h.block.id for h in await c.get_history(root, limit=2)] == ids[1:3]
            # The sidebar's window is "the last 2 visible blocks up to the spawn".
            side_history = [h.block.content for h in await c.get_history(side.id)]
            assert side_history == ["word1 zebrafish", "word2 zebrafish", "in the sidebar"]
            listed = await c.list_blocks(root)
            assert [b.id for b in listed.blocks] == ids[:3]
            everything = await c.list_blocks(root, include_retracted=True)
            assert [b.id for b in everything.blocks] == ids
            hits = await c.search_blocks("zebrafish", limit=10)
            assert sorted(h.block_id for h in hits) == sorted(ids[:3])
            assert (await c.get_block(ids[3])).content == "word3 zebrafish"  # still readable

            with pytest.raises(BlockNotFound):
                await c.retract_block("blk_nonesuch")
            # Export carries the retraction; an import reproduces it.
            parts = [p async for p in await c.export_conversation(conv.id)]
            types = [e.split('"type":"')[1].split('"')[0] for p in parts for e in p.events or []]
            assert types.count("block.retracted") == 1
            copy = await c.import_conversation(parts)
            copied = await c.list_blocks(copy.root_context_id)
            assert [b.content for b in copied.blocks] == [f"word{i} zebrafish" for i in range(3)]
            all_copied = await c.list_blocks(copy.root_context_id, include_retracted=True)
            assert len(all_copied.blocks) == 4
            assert [h.block.content for h in await c.get_history(copy.root_context_id)] == [
                f"word{i} zebrafish" for i in range(3)
            ]

            await c.archive_conversation(conv.id)
            with pytest.raises(InvalidTransition):
                await c.retract_block(ids[0])

            report = (await c.verify(wait=True)).result
            assert report is not None and report["state"] == "ok", report
            rows = store.query("SELECT count(*) FROM retractions", daemon.state_dir)
            assert rows == [(2,)]  # the source's and the import's

    anyio.run(go)
