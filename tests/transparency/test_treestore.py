"""The tree on disk: proofs equal the in-memory tree's; a crash's torn or missing tail and a
log rewritten behind the daemon's back are repaired from the log at open."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from timelined.auditlog.source import FileLogSource
from timelined.events import Record
from timelined.transparency import merkle
from timelined.treestore.levels import LevelFiles, LevelReader
from timelined.treestore.logtree import WAIT_BYTES, WAIT_LEAVES, LogTree, check_against_log


def _leaf(i: int) -> bytes:
    return merkle.leaf_hash(b"line %d" % i)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 70), min_size=1, max_size=6))
def test_level_files_match_the_memory_tree_across_reopens(batches: list[int]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        memory, n = merkle.MemoryTree(), 0
        for batch in batches:
            files = LevelFiles.open(Path(tmp))
            assert files.size == n
            for _ in range(batch):
                files.append(_leaf(n))
                memory.append_hash(_leaf(n))
                n += 1
            for size in {1, n // 2 or 1, n}:
                assert merkle.root(files, size) == merkle.root(memory, size)
                assert merkle.inclusion_proof(files, size - 1, n) == merkle.inclusion_proof(
                    memory, size - 1, n
                )
                assert merkle.consistency_proof(files, size, n) == merkle.consistency_proof(
                    memory, size, n
                )
            files.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 70)), min_size=1, max_size=8))
def test_extend_adds_the_same_hashes_as_append(steps: list[tuple[bool, int]]) -> None:
    """`extend` (a batch of leaves, level by level) makes the nodes `append` makes one leaf at
    a time, whatever the count already there (odd: a left half waits) and across reopens."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        memory, n = merkle.MemoryTree(), 0
        for reopen, batch in steps:
            files = LevelFiles.open(Path(tmp))
            leaves = [_leaf(n + i) for i in range(batch)]
            if reopen:
                files.extend(leaves)
            else:
                for leaf in leaves:
                    files.append(leaf)
            for leaf in leaves:
                memory.append_hash(leaf)
            n += batch
            assert files.size == n
            for level, row in enumerate(memory.levels):
                assert [files.node(level, i) for i in range(len(row))] == row
            files.close()


def test_a_torn_or_missing_tail_is_repaired(tmp_path: Path) -> None:
    files = LevelFiles.open(tmp_path)
    memory = merkle.MemoryTree()
    for i in range(37):
        files.append(_leaf(i))
        memory.append_hash(_leaf(i))
    files.close()
    with open(tmp_path / "level-00", "ab") as f:
        f.write(b"torn")  # half a hash
    os.truncate(tmp_path / "level-02", 32 * 3)  # level 2 lost its last 6 nodes
    (tmp_path / "level-05").unlink()  # and level 5 its only one
    files = LevelFiles.open(tmp_path)
    assert files.size == 37
    assert merkle.root(files, 37) == merkle.root(memory, 37)
    assert check_against_log  # the log-level repair is below
    files.close()


def _write_log(log_dir: Path, n: int, text: str = "x") -> None:
    from timelined.auditlog.record import GENESIS_PREV, encode_record
    from timelined.events import ConversationCreated

    log_dir.mkdir(parents=True, exist_ok=True)
    prev, lines = GENESIS_PREV, []
    for seq in range(1, n + 1):
        event = ConversationCreated(
            conversation_id=f"conv_{seq:026d}",
            name=f"{text}{seq}",
            root_context_id=f"ctx_{seq:026d}",
        )
        record, line = encode_record(seq, "2026-01-01T00:00:00.000000Z", "daemon", event, prev)
        prev = record.hash
        lines.append(line)
    (log_dir / f"{1:020d}.jsonl").write_bytes(b"".join(lines))


def test_open_extends_from_the_log_and_recomputes_a_rewritten_one(tmp_path: Path) -> None:
    log_dir, tree_dir = tmp_path / "log", tmp_path / "tree"
    _write_log(log_dir, 20)
    tree = LogTree.open(tree_dir, FileLogSource(log_dir), 12)  # the daemon's head was seq 12
    assert tree.size == 12
    tree.close()
    tree = LogTree.open(tree_dir, FileLogSource(log_dir), 20)  # extended, not recomputed
    first = tree.root(20)
    assert check_against_log(tree.files, 20, FileLogSource(log_dir)) is None
    tree.close()
    _write_log(log_dir, 20, text="rewritten")
    tree = LogTree.open(tree_dir, FileLogSource(log_dir), 20)
    assert tree.root(20) != first
    assert check_against_log(tree.files, 20, FileLogSource(log_dir)) is None
    tree.close()
    _write_log(log_dir, 20)
    files = LevelFiles.open(tree_dir)  # the old tree's files against the original log
    found = check_against_log(files, 20, FileLogSource(log_dir))
    assert found is not None and found.detail == "leaf 0 (seq 1) differs from the log"
    files.close()


def test_open_reads_the_log_from_its_end_only(tmp_path: Path) -> None:
    """Each boot checks the tree's last leaf against the log's line: near the log's head, that
    is a chunk read from the end of its segment, not the whole segment (64 MiB: ~100 ms)."""
    from timelined.auditlog.fileops import Handle, OsFileOps

    class Counting(OsFileOps):
        read = 0

        def pread(self, handle: Handle, size: int, offset: int) -> bytes:
            data = super().pread(handle, size, offset)
            Counting.read += len(data)
            return data

    log_dir, tree_dir = tmp_path / "log", tmp_path / "tree"
    _write_log(log_dir, 3000)
    segment = (log_dir / f"{1:020d}.jsonl").stat().st_size
    LogTree.open(tree_dir, FileLogSource(log_dir), 3000).close()
    source = FileLogSource(log_dir, Counting())
    tree = LogTree.open(tree_dir, source, 3000)  # the last leaf matches: nothing recomputed
    assert tree.size == 3000 and Counting.read <= 65536 < segment // 4
    tree.close()


def test_a_reload_reports_that_checkpoint_changes_need_a_restart(tmp_path: Path) -> None:
    import msgspec

    from timelined.config import CheckpointConfig, default_config
    from timelined.daemon.reload import diff

    old = default_config(tmp_path)
    new = msgspec.structs.replace(old, checkpoint=CheckpointConfig(interval_s=5.0))
    assert diff(old, new).restart_required == ["checkpoint.interval_s"]


async def test_checkpoints_cover_only_what_is_on_disk(tmp_path: Path) -> None:
    """With log.fsync = "interval" the tree runs ahead of the fsynced log: a checkpoint signs
    only the durable prefix, which a power cut cannot take back."""
    from timelined.config import default_config
    from timelined.transparency.checkpoint import open_checkpoint
    from timelined.treestore.service import Transparency

    config = default_config(tmp_path / "state")
    _write_log(config.log_dir, 9)
    transparency = Transparency.open(config, 9, FileLogSource(config.log_dir))
    durable = 6
    transparency.durable_seq = lambda: durable
    verifier = (await transparency.signer()).verifier()
    assert open_checkpoint(await transparency.checkpoint(), verifier).checkpoint.size == 6
    durable = 9
    signed = open_checkpoint(await transparency.checkpoint(), verifier).checkpoint
    assert (signed.size, signed.root) == (9, transparency.tree.root(9))
    transparency.close()


def test_the_commit_subscriber_adds_each_batch_and_stops_at_a_gap(tmp_path: Path) -> None:
    """`on_commit` gets each committed batch on the event loop: one leaf per line, in seq order;
    a record out of order stops the tree there (broken), it never takes a wrong leaf."""
    batch = _records(7)
    memory = merkle.MemoryTree()
    for _, line in batch:
        memory.append_hash(merkle.leaf_hash(line[:-1]))
    tree = LogTree(LevelFiles.open(tmp_path / "tree"))
    for part in (batch[:1], batch[1:4], batch[4:5]):
        tree.on_commit([r for r, _ in part], [line for _, line in part])
    assert tree.size == 5 and tree.broken is None
    assert tree.root(5) == merkle.root(memory, 5)
    # seq 7 where 6 was due: the leaf is not taken, and the tree stops there.
    tree.on_commit([batch[6][0]], [batch[6][1]])
    assert tree.size == 5 and tree.broken == "expected seq 6, got 7"
    tree.on_commit([batch[5][0]], [batch[5][1]])  # a broken tree takes nothing more
    assert tree.size == 5
    tree.close()


def _records(n: int) -> list[tuple[Record, bytes]]:
    from timelined.auditlog.record import GENESIS_PREV, encode_record
    from timelined.events import ConversationCreated

    prev, out = GENESIS_PREV, []
    for seq in range(1, n + 1):
        event = ConversationCreated(
            conversation_id=f"conv_{seq:026d}", name=f"c{seq}", root_context_id=f"ctx_{seq:026d}"
        )
        record, line = encode_record(seq, "2026-01-01T00:00:00.000000Z", "daemon", event, prev)
        prev = record.hash
        out.append((record, line))
    return out


def test_every_read_of_the_tree_sees_every_committed_leaf(tmp_path: Path) -> None:
    """The commit subscriber only queues its lines: a root, a proof, a flush for the verifier,
    each right after a commit, must hash them in first (read-your-writes for proofs)."""
    batch = _records(9)
    memory = merkle.MemoryTree()
    for _, line in batch:
        memory.append_hash(merkle.leaf_hash(line[:-1]))
    tree = LogTree(LevelFiles.open(tmp_path / "tree"))
    tree.on_commit([r for r, _ in batch[:3]], [line for _, line in batch[:3]])
    assert tree.size == 3
    assert tree.inclusion(2, 3) == merkle.inclusion_proof(memory, 2, 3)
    tree.on_commit([batch[3][0]], [batch[3][1]])
    assert tree.root(4) == merkle.root(memory, 4)
    tree.on_commit([r for r, _ in batch[4:7]], [line for _, line in batch[4:7]])
    assert tree.consistency(4, 7) == merkle.consistency_proof(memory, 4, 7)
    tree.on_commit([r for r, _ in batch[7:]], [line for _, line in batch[7:]])
    tree.flush()  # what the verifier reads: the files on disk, as another process sees them
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / f"{1:020d}.jsonl").write_bytes(b"".join(line for _, line in batch))
    reader = LevelReader(tmp_path / "tree")
    assert reader.size() == 9
    assert check_against_log(reader, 9, FileLogSource(tmp_path / "log")) is None
    reader.close()
    tree.close()


def test_committed_lines_wait_bounded_in_count_and_bytes(tmp_path: Path) -> None:
    """Lines nobody reads yet are hashed in once WAIT_LEAVES of them, or WAIT_BYTES, wait."""
    batch = _records(WAIT_LEAVES + 1)
    tree = LogTree(LevelFiles.open(tmp_path / "tree"))
    for record, line in batch[:-1]:
        tree.on_commit([record], [line])
    assert tree._files.size == WAIT_LEAVES  # hashed in with no read of the tree
    big = batch[-1][1][:-1] + b" " * WAIT_BYTES + b"\n"
    tree.on_commit([batch[-1][0]], [big])
    assert tree._files.size == WAIT_LEAVES + 1
    assert tree.root(WAIT_LEAVES + 1) == merkle.root(tree._files, WAIT_LEAVES + 1)
    tree.close()
