"""The client's check of a daemon's history: verify each new checkpoint against the last one
verified, which the caller keeps in a small file it names.

The file (JSON: the verifier key and the last verified signed checkpoint) is written whole or
not at all. The first audit trusts the key it is given, or the daemon's own (trust on first
use, said in the result); every later one uses the remembered key, so a daemon whose key changed
fails the signature check.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from pathlib import Path

import msgspec

from timelined.api.model import Block
from timelined.auditlog.atomic import write_file_atomic
from timelined.auditlog.record import RecordError, decode_line
from timelined.errors import CheckpointInvalid, HistoryRewritten
from timelined.transparency.checkpoint import SignedCheckpoint, open_checkpoint
from timelined.transparency.merkle import (
    ProofError,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from timelined.transparency.note import NoteError, Verifier

MAX_STATE_BYTES = 64 * 1024


class Remembered(msgspec.Struct, frozen=True):
    verifier_key: str
    checkpoint: str  # the signed note


class ProvenEvent(msgspec.Struct, frozen=True):
    """An event's log line with its inclusion proof in a checkpoint the client audited."""

    seq: int
    line: str  # the log line, newline excluded: its leaf is SHA-256(0x00 ‖ these bytes)
    leaf_index: int
    tree_size: int
    hashes: list[str]
    checkpoint: str


class AuditResult(msgspec.Struct, frozen=True):
    origin: str
    old_size: int | None  # None: nothing was remembered (first audit)
    new_size: int
    root: str  # base64
    key_trusted_on_first_use: bool
    checkpoint: str


def decode_hashes(hashes: list[str]) -> list[bytes]:
    try:
        return [base64.b64decode(h, validate=True) for h in hashes]
    except (binascii.Error, ValueError):
        raise CheckpointInvalid("a proof hash is not base64") from None


def parse_verifier(key: str) -> Verifier:
    try:
        return Verifier.parse(key)
    except NoteError as exc:
        raise CheckpointInvalid(f"verifier key: {exc}") from None


def open_signed(note: str, verifier: Verifier) -> SignedCheckpoint:
    try:
        return open_checkpoint(note, verifier)
    except NoteError as exc:
        raise CheckpointInvalid(str(exc)) from None


def load_remembered(path: str | os.PathLike[str]) -> Remembered | None:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    if len(data) > MAX_STATE_BYTES:
        raise CheckpointInvalid(f"{path}: larger than {MAX_STATE_BYTES} bytes")
    try:
        return msgspec.json.decode(data, type=Remembered)
    except msgspec.DecodeError as exc:
        raise CheckpointInvalid(f"{path}: {exc}") from None


def remember(path: str | os.PathLike[str], state: Remembered) -> None:
    write_file_atomic(path, msgspec.json.encode(state) + b"\n", mode=0o644)


def check_extends(
    old: SignedCheckpoint, new: SignedCheckpoint, proof: Callable[[int, int], list[str]]
) -> None:
    """Raise HistoryRewritten unless `new`'s tree extends `old`'s (`proof(old, new)` fetches
    the consistency proof's hashes)."""
    a, b = old.checkpoint, new.checkpoint
    if b.size < a.size:
        raise HistoryRewritten(a.size, b.size, "the tree is smaller than the one remembered")
    if a.size == 0:
        return  # every tree extends the empty one
    hashes = [] if a.size == b.size else decode_hashes(proof(a.size, b.size))
    try:
        verify_consistency(a.size, b.size, a.root, b.root, hashes)
    except ProofError as exc:
        raise HistoryRewritten(a.size, b.size, str(exc)) from None


def check_inclusion(signed: SignedCheckpoint, seq: int, line: bytes, hashes: list[str]) -> None:
    """Raise CheckpointInvalid unless `line` (a log line, newline excluded) is event `seq` of
    the checkpoint's tree."""
    cp = signed.checkpoint
    try:
        verify_inclusion(seq - 1, cp.size, leaf_hash(line), decode_hashes(hashes), cp.root)
    except ProofError as exc:
        raise CheckpointInvalid(f"event {seq}: {exc}") from None


def check_block_line(line: bytes, block: Block) -> None:
    """Raise CheckpointInvalid unless the proven log line is the append of `block` as read
    (the state answered a block the log does not hold: drift, or a lying daemon)."""
    try:
        record = decode_line(line + b"\n")
    except RecordError as exc:
        raise CheckpointInvalid(f"event {block.seq}: {exc}") from None
    written = getattr(record.event, "block", None)
    fields = ("id", "context_id", "role", "content", "timestamp")
    if (
        written is None
        or record.seq != block.seq
        or any(getattr(written, f) != getattr(block, f) for f in fields)
    ):
        raise CheckpointInvalid(f"block {block.id} as read is not the log's event {block.seq}")
