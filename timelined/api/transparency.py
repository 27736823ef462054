"""The parameters and replies of the verifiable-history methods (Admin; docs/transparency.md)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from timelined.api.scalars import Params

TreeSize = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Seq = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class CheckpointReply(msgspec.Struct, frozen=True):
    checkpoint: str  # a C2SP signed note whose text is a tlog-checkpoint


class CheckpointKeyReply(msgspec.Struct, frozen=True):
    verifier_key: str  # `<name>+<hex key id>+<base64(0x01 ‖ Ed25519 public key)>`


class GetInclusionProofParams(Params, frozen=True):
    seq: Seq
    tree_size: TreeSize | None = None  # default: the current tree


class InclusionProofReply(msgspec.Struct, frozen=True):
    leaf_index: int  # seq - 1
    tree_size: int
    hashes: list[str]  # base64, leaf side first


class GetConsistencyProofParams(Params, frozen=True):
    old_size: TreeSize
    new_size: TreeSize | None = None  # default: the current tree


class ConsistencyProofReply(msgspec.Struct, frozen=True):
    hashes: list[str]  # base64
