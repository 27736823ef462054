"""tools/verify_proof.py, the auditor's standalone script: it agrees with the package on every
proof, refuses changed ones, and imports nothing of timelined."""

from __future__ import annotations

import ast
import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import load_script
from timelined.transparency import merkle
from timelined.transparency.checkpoint import Checkpoint
from timelined.transparency.note import Signer

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "verify_proof.py"
SIGNER = Signer.generate("example.org/log")
KEY = str(SIGNER.verifier())


TOOL = load_script(SCRIPT)


def test_imports_only_the_standard_library_and_cryptography() -> None:
    tree = ast.parse(SCRIPT.read_text())
    roots = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    roots |= {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
    }
    assert roots - set(sys.stdlib_module_names) == {"cryptography"}


def _tree(n: int) -> tuple[merkle.MemoryTree, list[str]]:
    tree, lines = merkle.MemoryTree(), []
    for i in range(n):
        lines.append(f'{{"seq":{i + 1},"data":"event {i}"}}')
        tree.append(lines[-1].encode())
    return tree, lines


def _note(tree: merkle.MemoryTree, size: int) -> str:
    return Checkpoint("example.org/log", size, merkle.root(tree, size)).sign(SIGNER)


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(x).decode() for x in hashes]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 200), st.data())
def test_agrees_with_the_package(n: int, data: st.DataObject) -> None:
    tree, lines = _tree(n)
    index = data.draw(st.integers(0, n - 1))
    old = data.draw(st.integers(1, n))
    size_root = TOOL.open_checkpoint(_note(tree, n), KEY)
    assert size_root == (n, merkle.root(tree, n))
    proof = {"leaf_index": index, "tree_size": n, "line": lines[index]}
    proof["hashes"] = _b64(merkle.inclusion_proof(tree, index, n))
    TOOL.inclusion(*size_root, proof)
    with pytest.raises(TOOL.Failed):
        TOOL.inclusion(*size_root, {**proof, "line": lines[index] + " "})
    old_cp = TOOL.open_checkpoint(_note(tree, old), KEY)
    hashes = _b64(merkle.consistency_proof(tree, old, n))
    TOOL.consistency(old_cp, size_root, {"hashes": hashes})
    forked = merkle.MemoryTree()
    for i in range(old):
        forked.append(b"rewritten %d" % i)
    with pytest.raises(TOOL.Failed):  # a remembered tree whose past differs
        TOOL.consistency((old, merkle.root(forked, old)), size_root, {"hashes": hashes})


def test_the_command_line(tmp_path: Path) -> None:
    tree, lines = _tree(13)
    (tmp_path / "new.note").write_text(_note(tree, 13))
    (tmp_path / "old.note").write_text(_note(tree, 6))
    (tmp_path / "key").write_text(KEY + "\n")
    proof = {"leaf_index": 4, "tree_size": 13, "line": lines[4]}
    proof["hashes"] = _b64(merkle.inclusion_proof(tree, 4, 13))
    (tmp_path / "incl.json").write_text(json.dumps(proof))
    (tmp_path / "cons.json").write_text(
        json.dumps({"hashes": _b64(merkle.consistency_proof(tree, 6, 13))})
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-I", str(SCRIPT), *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )

    done = run("inclusion", "--key", "key", "--checkpoint", "new.note", "--proof", "incl.json")
    assert (done.returncode, done.stdout) == (0, "verified\n"), done.stderr
    done = run(
        "consistency",
        "--key",
        KEY,
        "--old",
        "old.note",
        "--checkpoint",
        "new.note",
        "--proof",
        "cons.json",
    )
    assert (done.returncode, done.stdout) == (0, "verified\n"), done.stderr
    forged = Signer.generate("example.org/log")  # same name, another key
    (tmp_path / "forged.note").write_text(
        Checkpoint("example.org/log", 13, merkle.root(tree, 13)).sign(forged)
    )
    done = run("inclusion", "--key", KEY, "--checkpoint", "forged.note", "--proof", "incl.json")
    assert done.returncode == 1 and "no signature" in done.stderr
    proof["line"] = lines[5]
    (tmp_path / "incl.json").write_text(json.dumps(proof))
    done = run("inclusion", "--key", KEY, "--checkpoint", "new.note", "--proof", "incl.json")
    assert done.returncode == 1 and "is not in the checkpoint's tree" in done.stderr
