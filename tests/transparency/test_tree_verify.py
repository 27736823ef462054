"""The verifier recomputes the Merkle tree from the log: a changed stored hash is found, named
(leaf, level, node), offline and in a running daemon's run; a repair, or the boot after a run
found it, rebuilds the tree from the log and it verifies again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.daemon.harness import DaemonProcess, short_tempdir
from tests.transparency.test_treestore import _write_log
from timelined.api.verify import ChainResult
from timelined.auditlog.source import FileLogSource
from timelined.client import Client
from timelined.treestore.levels import LevelFiles, LevelReader
from timelined.treestore.logtree import REBUILD_MARK, LogTree
from timelined.verifier.chain import check_chain
from timelined.verifier.protocol import ChainDone
from timelined.verifier.runner import run_child
from timelined.verifier.tree import check_tree


def _flip(tree_dir: Path, level: int, index: int) -> None:
    """Change one byte of one stored hash."""
    path = tree_dir / f"level-{level:02d}"
    data = bytearray(path.read_bytes())
    data[index * 32 + 5] ^= 0xFF
    path.write_bytes(bytes(data))


def _chain(log_dir: Path) -> ChainResult:
    return check_chain(log_dir)


def test_the_check_names_the_first_changed_node(tmp_path: Path) -> None:
    log_dir, tree_dir = tmp_path / "log", tmp_path / "tree"
    _write_log(log_dir, 40)
    LogTree.open(tree_dir, FileLogSource(log_dir), 40).close()
    assert check_tree(tree_dir, FileLogSource(log_dir), _chain(log_dir)).state == "ok"
    _flip(tree_dir, 2, 5)  # leaves 20..23
    found = check_tree(tree_dir, FileLogSource(log_dir), _chain(log_dir))
    assert (found.state, found.level, found.index, found.first_bad_leaf) == ("mismatch", 2, 5, 20)
    assert "node 5 of level 2 (leaves 20..23)" in found.detail
    _flip(tree_dir, 0, 13)  # a leaf before that node is found first
    found = check_tree(tree_dir, FileLogSource(log_dir), _chain(log_dir))
    assert (found.level, found.index, found.first_bad_leaf) == (0, 13, 13)
    # Up to a size before the changed leaf, the tree is fine.
    assert check_tree(tree_dir, FileLogSource(log_dir), _chain(log_dir), upto=13).state == "ok"


def test_the_chain_child_checks_the_tree_after_the_walk(tmp_path: Path) -> None:
    log_dir, tree_dir = tmp_path / "log", tmp_path / "tree"
    _write_log(log_dir, 9)
    LogTree.open(tree_dir, FileLogSource(log_dir), 9).close()
    _flip(tree_dir, 3, 0)
    done = run_child(["chain", "--log-dir", str(log_dir), "--tree-dir", str(tree_dir)])
    assert isinstance(done, ChainDone) and done.tree is not None
    assert (done.tree.state, done.tree.level, done.tree.first_bad_leaf) == ("mismatch", 3, 0)


def test_the_reader_sees_only_the_leaves_whose_every_level_is_written(tmp_path: Path) -> None:
    files = LevelFiles.open(tmp_path)
    for i in range(12):
        files.append(bytes([i]) * 32)
    files.flush()
    reader = LevelReader(tmp_path)
    assert reader.size() == 12
    # The daemon writes level 0 first: with level 2 not yet written out, 8 leaves are whole.
    (tmp_path / "level-02").write_bytes((tmp_path / "level-02").read_bytes()[:32])
    assert reader.size() == 7
    reader.close()
    files.close()
    assert not (tmp_path / "level-05").exists() and LevelReader(tmp_path / "none").size() == 0


def _offline(state_dir: Path) -> tuple[int, dict[str, object], str]:
    as_json = subprocess.run(
        [sys.executable, "-m", "timelined", "verify", "--state-dir", str(state_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    human = subprocess.run(
        [sys.executable, "-m", "timelined", "verify", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return as_json.returncode, json.loads(as_json.stdout), human.stdout


def test_a_changed_hash_is_found_offline_and_live_and_rebuilt() -> None:
    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        tree_dir = daemon.state_dir / "tree"
        with daemon, Client(daemon.socket_path) as client:
            conv = client.create_conversation("tree")
            for i in range(20):
                client.append_block(conv.root_context_id, "user", f"block {i}")
            client.audit(base / "audited.json")  # a checkpoint of the tree before the change
        code, report, _ = _offline(daemon.state_dir)
        assert code == 0 and report["tree"]["state"] == "ok" and report["tree"]["size"] == 21

        _flip(tree_dir, 1, 3)  # the node over leaves 6 and 7
        code, report, human = _offline(daemon.state_dir)
        assert code == 1 and report["state"] == "drift"
        tree = report["tree"]
        assert (tree["state"], tree["level"], tree["index"], tree["first_bad_leaf"]) == (
            "mismatch",
            1,
            3,
            6,
        )
        assert "tree: MISMATCH at leaf 6 (seq 7), level 1 node 3" in human

        # A running daemon's run finds it too, marks the tree, and a repair rebuilds it.
        with daemon.start(), Client(daemon.socket_path) as client:
            result = client.verify(wait=True).result
            assert result is not None and result["state"] == "drift"
            assert result["tree"]["first_bad_leaf"] == 6
            assert "Merkle tree differs from the log at leaf 6" in result["summary"]
            assert client.get_status().verify["tree"] == "mismatch"
            assert (tree_dir / REBUILD_MARK).exists()
            client.repair()
            again = client.verify(wait=True).result
            assert again is not None and again["state"] == "ok", again
            assert again["tree"] == {**again["tree"], "state": "ok", "size": 21}
            assert not (tree_dir / REBUILD_MARK).exists()
            client.append_block(conv.root_context_id, "user", "after the rebuild")
            # The rebuilt tree extends the checkpoint signed before the change.
            client.audit(base / "audited.json")
        assert _offline(daemon.state_dir)[0] == 0

        # The boot after a run found a mismatch (the mark) rebuilds the tree.
        _flip(tree_dir, 0, 2)
        with daemon.start(), Client(daemon.socket_path) as client:
            result = client.verify(wait=True).result
            assert result is not None and result["tree"]["first_bad_leaf"] == 2
        assert (tree_dir / REBUILD_MARK).exists()
        with daemon.start(), Client(daemon.socket_path) as client:
            assert not (tree_dir / REBUILD_MARK).exists()
            result = client.verify(wait=True).result
            assert result is not None and result["tree"]["state"] == "ok", result
        code, report, _ = _offline(daemon.state_dir)
        assert code == 0 and report["tree"]["state"] == "ok"
