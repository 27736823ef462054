"""An export's checkpoint and proofs (issue 19): the end part's signed checkpoint covering every
event of the export, and the `proofs` parts before it (docs/transparency.md, "Exports")."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator

import anyio
import msgspec

from timelined.api.exchange import EventProof, ExportPart
from timelined.auditlog.record import peek_seq
from timelined.errors import FeatureUnavailable
from timelined.replies import ReplyBudget
from timelined.transparency.merkle import ProofError
from timelined.treestore.service import Transparency

log = logging.getLogger(__name__)

# The tree is extended by a commit subscriber after the commit's reply: an export taken right
# after a write may find it one batch behind (and with `log.fsync = "interval"` the checkpoint
# waits for the fsync too). Past this, the export ends without a checkpoint rather than hang.
COVER_WAIT_S = 5.0
PROOFS_PER_PART = 500  # each proof is O(log n) reads on the event loop: a part at a time

_encode = msgspec.json.Encoder().encode


def event_seqs(part: ExportPart) -> list[int]:
    """The seqs of a part's event lines (read from each line's prefix: the daemon's own)."""
    found = (peek_seq(line[:40].encode()) for line in part.events or ())
    return [seq for seq in found if seq is not None]


def _covered(service: Transparency, seq: int) -> bool:
    durable = service.durable_seq
    return service.tree.size >= seq and (durable is None or durable() >= seq)


async def covering_checkpoint(service: Transparency, last_seq: int) -> str | None:
    """A signed checkpoint whose tree holds event `last_seq`; None when the tree does not reach
    it within COVER_WAIT_S, or at once with `log.fsync = "off"` (checkpoints cover only the
    fsynced log, which then moves only at a stop)."""
    durable = service.durable_seq
    if service.config.log.fsync == "off" and durable is not None and durable() < last_seq:
        return None
    with anyio.move_on_after(COVER_WAIT_S):
        # Polled: the tree has no event to wait on, and the wait is short and rare.
        while not _covered(service, last_seq):  # noqa: ASYNC110
            await anyio.sleep(0.01)
        return await service.checkpoint()
    log.warning("export without a checkpoint: the tree did not reach seq %d in time", last_seq)
    return None


async def proof_parts(
    service: Transparency, seqs: list[int], tree_size: int, max_bytes: int
) -> AsyncGenerator[ExportPart, None]:
    """Each event's inclusion proof in the tree of `tree_size`, in parts of at most `max_bytes`."""
    batch: list[EventProof] = []
    budget = ReplyBudget(max_bytes)
    for seq in seqs:
        proof = EventProof(seq, service.inclusion(seq - 1, tree_size))
        size = len(_encode(proof)) + 1
        if not budget.add(size) or len(batch) >= PROOFS_PER_PART:
            yield ExportPart(proofs=batch)
            batch, budget = [], ReplyBudget(max_bytes)
            budget.add(size)
        batch.append(proof)
    if batch:
        yield ExportPart(proofs=batch)


async def proven_end(
    service: Transparency | None, end: ExportPart, seqs: list[int], max_bytes: int
) -> AsyncGenerator[ExportPart, None]:
    """The proofs parts, then `end` with the checkpoint they lead to. Without the tree, or when
    it fails, the end goes out without a checkpoint (the export itself still goes out,
    unproven, and the daemon's log says why)."""
    assert end.end is not None
    note = None
    if service is not None and seqs:
        try:
            note = await covering_checkpoint(service, max(seqs))
        except FeatureUnavailable as exc:  # the key cannot be used: the tree is served, unsigned
            log.error("export without a checkpoint: %s", exc.message)
    if service is not None and note is not None:
        size = int(note.split("\n", 2)[1])
        try:
            async for part in proof_parts(service, seqs, size, max_bytes):
                yield part
        except (OSError, ProofError) as exc:
            log.error("export without a checkpoint: a proof failed: %s", exc)
            note = None
    yield ExportPart(end=msgspec.structs.replace(end.end, checkpoint=note))
