"""Check an export against a checkpoint obtained elsewhere (docs/transparency.md, "Exports").

An export's end part carries a signed checkpoint whose tree holds every event of the export, and
a `proofs` part gives each event's inclusion proof in that tree. Given a checkpoint the verifier
got another way (an audit, a witness, a mailing list) and the log's verifier key, the export is
proven when: both checkpoints are signed by the key; the two trees are one history (equal sizes:
equal roots; else the RFC 6962 consistency proof between the sizes, which the caller fetches
from any source: it is checked, not trusted); and every event line's leaf hash is proven in the
embedded checkpoint's tree. The blocks and the header are not proven here: ImportConversation
checks them against the events (a replay), so proven events make a proven document.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from timelined.api.exchange import ExportPart
from timelined.auditlog.record import peek_seq
from timelined.errors import CheckpointInvalid, HistoryRewritten
from timelined.transparency.audit import (
    check_extends,
    check_inclusion,
    open_signed,
    parse_verifier,
)
from timelined.transparency.checkpoint import SignedCheckpoint


class ExportVerification(msgspec.Struct, frozen=True):
    origin: str
    tree_size: int  # the embedded checkpoint's
    other_size: int  # the checkpoint obtained elsewhere
    events: int  # every one proven
    checkpoint: str  # the embedded signed note


@dataclass(frozen=True)
class ExportClaim:
    """What an export claims, its checkpoints' signatures checked; the proofs not yet."""

    embedded: SignedCheckpoint
    other: SignedCheckpoint
    lines: list[str]
    proofs: dict[int, list[str]]

    def consistency_sizes(self) -> tuple[int, int] | None:
        """The (old, new) sizes whose consistency proof `check_claim` needs; None: none."""
        a, b = sorted((self.embedded.checkpoint.size, self.other.checkpoint.size))
        return None if a == b or a == 0 else (a, b)


def read_claim(parts: Iterable[ExportPart], checkpoint: str, verifier_key: str) -> ExportClaim:
    """The export's events, proofs and checkpoint; CheckpointInvalid when it carries none or
    either checkpoint is not signed by `verifier_key`."""
    lines: list[str] = []
    proofs: dict[int, list[str]] = {}
    note: str | None = None
    for part in parts:
        lines.extend(part.events or ())
        for proof in part.proofs or ():
            proofs[proof.seq] = proof.hashes
        if part.end is not None:
            note = part.end.checkpoint
    if note is None:
        raise CheckpointInvalid(
            "the export carries no checkpoint (made by a daemon without the Merkle tree, "
            "or before it kept one)"
        )
    verifier = parse_verifier(verifier_key)
    return ExportClaim(
        embedded=open_signed(note, verifier),
        other=open_signed(checkpoint, verifier),
        lines=lines,
        proofs=proofs,
    )


def check_claim(claim: ExportClaim, consistency: list[str] | None = None) -> ExportVerification:
    """Raise HistoryRewritten unless the two checkpoints are one history (`consistency`: the
    proof between `claim.consistency_sizes()`), CheckpointInvalid naming the first event
    whose line is not proven in the embedded checkpoint."""
    old, new = sorted((claim.embedded, claim.other), key=lambda s: s.checkpoint.size)
    sizes = claim.consistency_sizes()
    if sizes is not None and consistency is None:
        raise HistoryRewritten(
            sizes[0], sizes[1], "the checkpoints' sizes differ and no consistency proof was given"
        )
    check_extends(old, new, lambda a, b: consistency or [])
    size = claim.embedded.checkpoint.size
    last = 0
    for line in claim.lines:
        data = line.encode()
        seq = peek_seq(data)
        if seq is None:
            raise CheckpointInvalid(f"event after {last}: the line does not start with its seq")
        if seq > size:
            raise CheckpointInvalid(f"event {seq} is not in the checkpoint (tree size {size})")
        hashes = claim.proofs.get(seq)
        if hashes is None:
            raise CheckpointInvalid(f"event {seq}: the export carries no proof of it")
        check_inclusion(claim.embedded, seq, data, hashes)
        last = seq
    return ExportVerification(
        origin=claim.embedded.checkpoint.origin,
        tree_size=size,
        other_size=claim.other.checkpoint.size,
        events=len(claim.lines),
        checkpoint=claim.embedded.text,
    )


def verify_export(
    parts: Iterable[ExportPart],
    checkpoint: str,
    verifier_key: str,
    consistency: list[str] | None = None,
) -> ExportVerification:
    """`read_claim` then `check_claim`: for a caller that holds the consistency proof already
    (or whose checkpoints are of one size)."""
    return check_claim(read_claim(parts, checkpoint, verifier_key), consistency)
