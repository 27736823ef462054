"""docs/transparency.md's worked example, recomputed from the page's own text: the lines' leaf
hashes, the node, the root, the signed checkpoint, both proofs, and the signature's check."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from timelined.auditlog.record import check_frame
from timelined.transparency import merkle
from timelined.transparency.checkpoint import Checkpoint, open_checkpoint
from timelined.transparency.note import Signer, Verifier

DOC = (Path(__file__).resolve().parents[2] / "docs" / "transparency.md").read_text()


def block(name: str) -> str:
    found = re.search(rf"^```example-{name}\n(.*?)^```", DOC, re.S | re.M)
    assert found, name
    return found.group(1)


def test_the_worked_example_is_what_the_code_computes() -> None:
    lines = block("log").encode().splitlines()
    assert len(lines) == 3
    for line in lines:
        check_frame(line)  # real log lines, their hash members right
    tree = merkle.MemoryTree()
    for line in lines:
        tree.append(line)
    assert [tree.node(0, i).hex() for i in range(3)] == block("leaves").split()
    assert merkle.node_hash(tree.node(0, 0), tree.node(0, 1)).hex() == block("node").strip()
    root = merkle.root(tree, 3)
    assert [root.hex(), base64.b64encode(root).decode()] == block("root").split()

    signer = Signer.parse(block("signer"))
    assert str(signer.verifier()) == block("verifier").strip()
    note = block("note")
    assert Checkpoint("example.org/timelined", 3, root).sign(signer) == note
    signed = open_checkpoint(note, Verifier.parse(block("verifier")))
    assert signed.checkpoint.root == root

    inclusion = base64.b64encode(merkle.inclusion_proof(tree, 2, 3)[0]).decode()
    consistency = base64.b64encode(merkle.consistency_proof(tree, 2, 3)[0]).decode()
    assert f"in the tree of 3 is one hash, node(leaf 0, leaf 1):\n`{inclusion}`" in DOC
    assert f"from size 2 to size 3 is one hash, leaf 2:\n`{consistency}`" in DOC
