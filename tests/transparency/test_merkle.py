"""RFC 6962 hashing and proofs against published vectors, and a property test of every proof."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timelined.transparency.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "transparency_dev_merkle.json").read_text()
)

# RFC 6962's reference tree as transparency-dev/merkle's testonly/constants.go and
# cmd/proofgen/main.go give it (commit 417fb0c3, Apache-2.0): eight leaf inputs, the root of
# every prefix, and four generated proofs of each kind (leaf numbers 1-based there).
LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
          "606162636465666768696a6b6c6d6e6f"]  # fmt: skip
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip


def reference_tree(n: int = 8) -> MemoryTree:
    tree = MemoryTree()
    for leaf in LEAVES[:n]:
        tree.append(bytes.fromhex(leaf))
    return tree


def test_roots_of_every_prefix() -> None:
    assert root(MemoryTree(), 0) == EMPTY_ROOT
    tree = reference_tree()
    assert [root(tree, n).hex() for n in range(1, 9)] == ROOTS


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION)
def test_inclusion_proofs_are_the_published_ones(leaf: int, size: int, proof: list[str]) -> None:
    tree = reference_tree()
    made = inclusion_proof(tree, leaf - 1, size)
    assert [h.hex() for h in made] == proof
    verify_inclusion(leaf - 1, size, tree.node(0, leaf - 1), made, bytes.fromhex(ROOTS[size - 1]))


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proofs_are_the_published_ones(old: int, new: int, proof: list[str]) -> None:
    made = consistency_proof(reference_tree(), old, new)
    assert [h.hex() for h in made] == proof
    verify_consistency(old, new, bytes.fromhex(ROOTS[old - 1]), bytes.fromhex(ROOTS[new - 1]), made)


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


@pytest.mark.parametrize("name", sorted(VECTORS["inclusion"]))
def test_inclusion_probes(name: str) -> None:
    v = VECTORS["inclusion"][name]
    args = (v["leafIdx"], v["treeSize"], _b64(v["leafHash"]), [_b64(p) for p in v["proof"] or []])
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args, _b64(v["root"]))
    else:
        verify_inclusion(*args, _b64(v["root"]))


@pytest.mark.parametrize("name", sorted(VECTORS["consistency"]))
def test_consistency_probes(name: str) -> None:
    v = VECTORS["consistency"][name]
    args = (v["size1"], v["size2"], _b64(v["root1"]), _b64(v["root2"]))
    proof = [_b64(p) for p in v["proof"] or []]
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args, proof)
    else:
        verify_consistency(*args, proof)


def _flip(h: bytes, bit: int) -> bytes:
    return bytes(b ^ (1 << bit % 8) if i == bit // 8 % len(h) else b for i, b in enumerate(h))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.data())
def test_every_proof_verifies_and_any_change_fails(n: int, data: st.DataObject) -> None:
    tree = MemoryTree()
    for i in range(n):
        tree.append(i.to_bytes(4, "big"))
    size = data.draw(st.integers(1, n))
    index = data.draw(st.integers(0, size - 1))
    old = data.draw(st.integers(1, size))
    bit = data.draw(st.integers(0, 255))
    top, old_root, leaf = root(tree, size), root(tree, old), tree.node(0, index)

    path = inclusion_proof(tree, index, size)
    verify_inclusion(index, size, leaf, path, top)
    assert len(path) <= size.bit_length()
    with pytest.raises(ProofError):  # a changed leaf
        verify_inclusion(index, size, leaf_hash(b"changed" + leaf), path, top)
    with pytest.raises(ProofError):  # the leaf's line changed by one bit
        verify_inclusion(index, size, _flip(leaf, bit), path, top)
    for k in range(len(path)):  # any changed proof hash
        with pytest.raises(ProofError):
            verify_inclusion(
                index, size, leaf, [*path[:k], _flip(path[k], bit), *path[k + 1 :]], top
            )

    proof = consistency_proof(tree, old, size)
    verify_consistency(old, size, old_root, top, proof)
    with pytest.raises(ProofError):  # a different past
        verify_consistency(old, size, _flip(old_root, bit), top, proof)
    with pytest.raises(ProofError):
        verify_consistency(old, size, old_root, _flip(top, bit), proof)
    for k in range(len(proof)):
        with pytest.raises(ProofError):
            bad = [*proof[:k], _flip(proof[k], bit), *proof[k + 1 :]]
            verify_consistency(old, size, old_root, top, bad)
