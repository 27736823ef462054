"""The tree's check in chunks (treestore/leafcheck.py) fed by the chain walk: every stored node
changed, at every level, is found by the chunked comparison itself, and named as the
leaf-by-leaf check names it; the walk hands the check every good line and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.transparency.test_treestore import _write_log
from timelined.auditlog.source import FileLogSource
from timelined.treestore import leafcheck
from timelined.treestore.leafcheck import LeafCheck
from timelined.treestore.levels import LevelReader
from timelined.treestore.logtree import LogTree, check_against_log
from timelined.verifier.tree import check_chain_and_tree

LEAVES = 37  # 100101b: a tree with a perfect subtree of 32, one of 4 and a lone leaf


def _flip(tree_dir: Path, level: int, index: int) -> None:
    path = tree_dir / f"level-{level:02d}"
    data = bytearray(path.read_bytes())
    data[index * 32 + 7] ^= 0x40
    path.write_bytes(bytes(data))


def _lines(log_dir: Path) -> list[bytes]:
    return [line[:-1] for _, line in FileLogSource(log_dir).lines(0, LEAVES)]


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Path, Path]:
    log_dir, tree_dir = tmp_path / "log", tmp_path / "tree"
    _write_log(log_dir, LEAVES)
    LogTree.open(tree_dir, FileLogSource(log_dir), LEAVES).close()
    return log_dir, tree_dir


def _run(tree_dir: Path, log_dir: Path, chunk_level: int, size: int = LEAVES) -> LeafCheck:
    reader = LevelReader(tree_dir)
    check = LeafCheck(reader, size, chunk_level)
    lines = _lines(log_dir)
    for start in range(0, len(lines), 5):  # batches that straddle the chunks
        check.feed(lines[start : start + 5])
    return check


@pytest.mark.parametrize("chunk_level", [0, 1, 2, 3, 12])
def test_every_changed_node_is_found_and_named_as_leaf_by_leaf(
    logged: tuple[Path, Path], chunk_level: int
) -> None:
    log_dir, tree_dir = logged
    source = FileLogSource(log_dir)
    check = _run(tree_dir, log_dir, chunk_level)
    assert check.finish(LEAVES, source) is None and not check.differs
    check.reader.close()
    level = 0
    while (tree_dir / f"level-{level:02d}").exists():
        for index in range(LEAVES >> level):
            _flip(tree_dir, level, index)
            check = _run(tree_dir, log_dir, chunk_level)
            found = check.finish(LEAVES, source)
            # The chunked comparison found it (the leaf-by-leaf check only names it).
            assert check.differs, (level, index)
            expected = check_against_log(check.reader, LEAVES, source)
            assert found == expected and found is not None
            check.reader.close()
            _flip(tree_dir, level, index)
        level += 1
    assert level == 6


def test_nodes_past_the_size_checked_are_not_looked_at(logged: tuple[Path, Path]) -> None:
    log_dir, tree_dir = logged
    _flip(tree_dir, 0, 20)
    _flip(tree_dir, 2, 5)  # leaves 20..23
    check = _run(tree_dir, log_dir, 2, size=20)
    assert check.finish(20, FileLogSource(log_dir)) is None
    check.reader.close()
    check = _run(tree_dir, log_dir, 2, size=21)
    found = check.finish(21, FileLogSource(log_dir))
    assert found is not None and (found.level, found.index) == (0, 20)
    check.reader.close()


def test_the_walk_feeds_the_tree_every_good_line_and_no_torn_one(
    logged: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    log_dir, tree_dir = logged
    monkeypatch.setattr(leafcheck, "CHUNK_LEVEL", 2)
    chain, tree = check_chain_and_tree(log_dir, tree_dir)
    assert chain.ok and (tree.state, tree.size) == ("ok", LEAVES)
    _flip(tree_dir, 3, 1)  # leaves 8..15
    chain, tree = check_chain_and_tree(log_dir, tree_dir)
    assert (tree.state, tree.level, tree.index, tree.first_bad_leaf) == ("mismatch", 3, 1, 8)
    _flip(tree_dir, 3, 1)
    # An unfinished last line (a crash's torn tail) is not a leaf: the tree's 37 leaves are
    # checked against the 37 good lines, then the daemon's next boot cuts the tail.
    segment = next(log_dir.iterdir())
    with segment.open("ab") as f:
        f.write(b'{"seq":38,"unfinished')
    chain, tree = check_chain_and_tree(log_dir, tree_dir)
    assert chain.ok and chain.torn is not None and (tree.state, tree.size) == ("ok", LEAVES)
    # A tree longer than the log (the log lost its end): checked as far as the log goes.
    segment.write_bytes(b"".join(segment.read_bytes().splitlines(keepends=True)[:30]))
    chain, tree = check_chain_and_tree(log_dir, tree_dir)
    assert chain.ok and (tree.state, tree.size) == ("ok", 30)
    assert "the tree holds 37" in tree.detail
    # Only up to the daemon's tree size at the run's start.
    chain, tree = check_chain_and_tree(log_dir, tree_dir, tree_upto=9)
    assert (tree.state, tree.size) == ("ok", 9)


def test_a_damaged_log_skips_the_tree(logged: tuple[Path, Path]) -> None:
    log_dir, tree_dir = logged
    segment = next(log_dir.iterdir())
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines[:10] + lines[11:]))  # seq 11 is gone: a gap
    chain, tree = check_chain_and_tree(log_dir, tree_dir)
    assert not chain.ok and chain.damage is not None and chain.damage.kind == "gap"
    assert (tree.state, tree.detail) == ("skipped", "the log is damaged: see the chain")
