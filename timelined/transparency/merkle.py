"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.

Leaf hash = SHA-256(0x00 ‖ leaf bytes); node hash = SHA-256(0x01 ‖ left ‖ right); the root of
the empty tree is SHA-256 of nothing. A tree of n leaves splits at k, the largest power of two
below n: root = node(root(leaves[0:k]), root(leaves[k:n])).

Proofs are built from a `NodeSource`: the hash of any *perfect* subtree (2^level leaves starting
at index·2^level). Every range a proof needs decomposes into at most log2(n) perfect subtrees,
so a proof costs O(log n) reads of a persistent store (timelined/treestore).
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import sha256
from typing import Protocol

from timelined.errors import LocalError

HASH_SIZE = 32
EMPTY_ROOT = sha256(b"").digest()
# The domain separation of RFC 6962, for loops that hash many leaves or nodes inline.
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    return sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(NODE_PREFIX + left + right).digest()


class ProofError(LocalError, ValueError):
    """A proof that does not verify, or a request no proof can answer (sizes out of range)."""

    name = "ProofError"


class NodeSource(Protocol):
    """Hashes of perfect subtrees: `node(level, index)` covers the 2^level leaves from
    index·2^level."""

    def node(self, level: int, index: int) -> bytes: ...


def _split(size: int) -> int:
    """The largest power of two strictly below `size` (size >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def range_hash(src: NodeSource, begin: int, end: int) -> bytes:
    """The Merkle hash of leaves [begin, end), where begin is a multiple of the largest power of
    two not above end - begin (true of every range the RFC's recursion makes)."""
    size = end - begin
    if size == 0:
        return EMPTY_ROOT
    # The perfect subtrees of [begin, end), left to right, are the set bits of size, high first;
    # the hash folds them from the right.
    parts: list[bytes] = []
    pos = begin
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            parts.append(src.node(level, pos >> level))
            pos += 1 << level
    acc = parts.pop()
    while parts:
        acc = node_hash(parts.pop(), acc)
    return acc


def root(src: NodeSource, size: int) -> bytes:
    return range_hash(src, 0, size)


def inclusion_proof(src: NodeSource, index: int, size: int) -> list[bytes]:
    """RFC 6962 PATH(index, D[0:size]), leaf side first."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not below the tree size {size}")
    proof: list[bytes] = []
    begin, end = 0, size
    while end - begin > 1:
        k = _split(end - begin)
        if index < begin + k:
            proof.append(range_hash(src, begin + k, end))
            end = begin + k
        else:
            proof.append(range_hash(src, begin, begin + k))
            begin += k
    proof.reverse()
    return proof


def consistency_proof(src: NodeSource, old_size: int, new_size: int) -> list[bytes]:
    """RFC 6962 PROOF(old_size, D[0:new_size]); empty when the sizes are equal."""
    if not 0 < old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    proof: list[bytes] = []
    m, begin, end, whole = old_size, 0, new_size, True
    while m != end - begin:
        k = _split(end - begin)
        if m <= k:
            proof.append(range_hash(src, begin + k, end))
            end = begin + k
        else:
            proof.append(range_hash(src, begin, begin + k))
            m -= k
            begin += k
            whole = False
    if not whole:
        proof.append(range_hash(src, begin, end))
    proof.reverse()
    return proof


def _check_hashes(proof: Sequence[bytes], *more: bytes) -> None:
    if any(len(h) != HASH_SIZE for h in (*proof, *more)):
        raise ProofError(f"a hash is not {HASH_SIZE} bytes")


def _fold(
    fn: int, sn: int, path: Sequence[bytes], seed: bytes, right_only: bool
) -> tuple[bytes, bytes]:
    """RFC 9162's walk up the tree from node `fn` of the last node `sn`, hashing in `path`.

    Returns (r, s): `s` takes every hash (the new root), `r` only those on its left (the old
    root of a consistency proof); with `right_only` false, r follows s (an inclusion proof).
    """
    r = s = seed
    for p in path:
        if sn == 0:
            raise ProofError("the proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r, s = node_hash(p, r), node_hash(p, s)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            s = node_hash(s, p)
            if not right_only:
                r = s
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the proof is shorter than the tree is deep")
    return r, s


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` makes of leaf hash `leaf` at `index` (RFC 9162 2.1.3.2)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not below the tree size {size}")
    _check_hashes(proof, leaf)
    return _fold(index, size - 1, proof, leaf, right_only=False)[1]


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """Raise ProofError unless `proof` shows leaf hash `leaf` at `index` in the tree `root`."""
    if root_from_inclusion(index, size, leaf, proof) != expected_root:
        raise ProofError(f"the inclusion proof of leaf {index} does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ProofError unless the tree (new_size, new_root) extends (old_size, old_root)
    (RFC 9162 2.1.4.2). A proof from the empty tree proves nothing and is refused, as by
    transparency-dev/merkle."""
    if not 0 < old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("equal sizes need an empty proof")
        if old_root != new_root:
            raise ProofError("two different roots for the same size")
        return
    if not proof:
        raise ProofError("empty consistency proof")
    _check_hashes(proof, old_root, new_root)
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr, sr = _fold(fn, sn, path[1:], path[0], right_only=True)
    if fr != old_root:
        raise ProofError(f"the proof does not lead to the root of size {old_size}")
    if sr != new_root:
        raise ProofError(f"the proof does not lead to the root of size {new_size}")


class MemoryTree:
    """A whole tree in memory, one list of hashes per level (tests, small exports)."""

    def __init__(self) -> None:
        self.levels: list[list[bytes]] = [[]]

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append_hash(self, leaf: bytes) -> None:
        level, h = 0, leaf
        while True:
            row = self.levels[level]
            row.append(h)
            if len(row) & 1:
                return
            h = node_hash(row[-2], row[-1])
            level += 1
            if level == len(self.levels):
                self.levels.append([])

    def append(self, data: bytes) -> None:
        self.append_hash(leaf_hash(data))

    def node(self, level: int, index: int) -> bytes:
        return self.levels[level][index]
