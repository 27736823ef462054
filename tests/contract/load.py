"""Writers for the contract suite's real-daemon runs: many connections appending blocks with
client-chosen ids, an id recorded only once its reply arrived (acknowledged), and the checks that
follow a run: every acknowledged block is in a daemon's reads, at consecutive positions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from timelined.client import AsyncClient


@dataclass
class Tally:
    """What the writers of one daemon got: acknowledged (context, block id)s and errors."""

    name: str
    acked: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def writer(
    socket_path: Path,
    contexts: Sequence[str],
    n: int,
    tally: Tally,
    stop: anyio.Event,
) -> None:
    """Append to `contexts` (round robin) on one connection until `stop`, or until an error
    (a killed daemon's writers end on theirs: those writes are not acknowledged)."""
    i = 0
    async with AsyncClient(socket_path, max_idle=1) as tl:
        while not stop.is_set():
            context = contexts[(n + i) % len(contexts)]
            block_id = f"{tally.name}-w{n}-{i}"
            try:
                await tl.append_block(context, "user", f"{block_id} payload", id=block_id)
            except Exception as exc:  # whatever it is, recorded: the caller checks
                tally.errors.append(f"{type(exc).__name__}: {exc}")
                return
            tally.acked.append((context, block_id))
            i += 1


async def make_contexts(socket_path: Path, count: int) -> list[str]:
    async with AsyncClient(socket_path) as tl:
        return [(await tl.create_conversation(f"load {i}")).root_context_id for i in range(count)]


async def read_all(socket_path: Path, contexts: Sequence[str]) -> dict[str, list[str]]:
    """Every block id of each context, in position order, paged through ListBlocks; checks the
    positions are 1, 2, 3, ... (one total order, no gap, no repeat)."""
    out: dict[str, list[str]] = {}
    async with AsyncClient(socket_path) as tl:
        for context in contexts:
            ids: list[str] = []
            after: int | None = None
            while True:
                page = await tl.list_blocks(context, after=after, limit=500)
                for block in page.blocks:
                    assert block.position == len(ids) + 1, (context, block.position, len(ids))
                    ids.append(block.id)
                if page.next is None:
                    break
                after = page.next
            out[context] = ids
    return out


def missing(acked: Sequence[tuple[str, str]], seen: dict[str, list[str]]) -> list[str]:
    """The acknowledged block ids a daemon's reads do not show where they were written."""
    present = {context: set(ids) for context, ids in seen.items()}
    return [block for context, block in acked if block not in present.get(context, set())]
