"""The Merkle tree, checkpoints and proofs of one real daemon, on each backend (the `store`
fixture): GetCheckpoint / GetInclusionProof / GetConsistencyProof checked by the client's own
verification (transparency/audit.py), by the auditor's script (tools/verify_proof.py) and by
`timelinectl verify-export` on an export. Two daemons on one PostgreSQL database:
tests/pg/test_pg_tree.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon.harness import serving
from tests.stores import Store
from tests.transparency.test_end_to_end import _ctl as ctl
from timelined.client import Client
from timelined.errors import CheckpointInvalid
from timelined.transparency import audit as trust

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "verify_proof.py"


def verify_proof(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def test_checkpoints_and_proofs_verify(store: Store, tmp_path: Path) -> None:
    with serving(**store.overrides()) as daemon, Client(daemon.socket_path) as c:
        conv = c.create_conversation("proven")
        appended = [c.append_block(conv.root_context_id, "user", f"block {i}") for i in range(6)]
        remembered = tmp_path / "remembered.json"
        first = c.audit(remembered)  # trusted on first use
        # The tree holds every event acknowledged before the call.
        assert first.new_size == appended[-1].seq
        key = c.get_checkpoint_key()
        signed = trust.open_signed(c.get_checkpoint(), trust.parse_verifier(key))
        size = signed.checkpoint.size
        assert size == first.new_size
        lines = store.log_lines(daemon.state_dir)
        assert len(lines) == size
        for seq in range(1, size + 1):
            proof = c.get_inclusion_proof(seq, size)
            assert (proof.leaf_index, proof.tree_size) == (seq - 1, size)
            trust.check_inclusion(signed, seq, lines[seq - 1][:-1], proof.hashes)
        with pytest.raises(CheckpointInvalid):  # another line is not that leaf
            trust.check_inclusion(signed, 3, lines[3][:-1], c.get_inclusion_proof(3, size).hashes)
        block, proven = c.get_block_proven(appended[2].block.id, remembered)
        assert (block.content, proven.seq, proven.tree_size) == ("block 2", appended[2].seq, size)

        for i in range(5):
            c.append_block(conv.root_context_id, "user", f"later {i}")
        second = c.audit(remembered)  # the consistency proof from the first is checked
        assert (second.old_size, second.new_size) == (size, size + 5)

        # The auditor's script, from timelinectl's JSON.
        old_note, new_note = tmp_path / "old.note", tmp_path / "new.note"
        old_note.write_text(signed.text, encoding="utf-8")
        new_note.write_text(second.checkpoint, encoding="utf-8")
        proved = ctl(daemon, "--json", "prove", str(appended[4].seq), "--key", key)
        assert proved.returncode == 0, proved.stderr
        (tmp_path / "inclusion.json").write_text(proved.stdout, encoding="utf-8")
        (tmp_path / "cp.note").write_text(json.loads(proved.stdout)["checkpoint"], "utf-8")
        done = verify_proof(
            "inclusion",
            *("--key", key, "--checkpoint", str(tmp_path / "cp.note")),
            *("--proof", str(tmp_path / "inclusion.json")),
        )
        assert done.returncode == 0 and "verified" in done.stdout, done.stdout + done.stderr
        made = ctl(daemon, "--json", "consistency-proof", str(size), str(size + 5))
        assert made.returncode == 0, made.stderr
        (tmp_path / "consistency.json").write_text(made.stdout, encoding="utf-8")
        done = verify_proof(
            "consistency",
            *("--key", key, "--old", str(old_note), "--checkpoint", str(new_note)),
            *("--proof", str(tmp_path / "consistency.json")),
        )
        assert done.returncode == 0 and "verified" in done.stdout, done.stdout + done.stderr

        # An export carries its checkpoint and proofs: proven against a checkpoint from elsewhere.
        export_file = tmp_path / "export.jsonl"
        done = ctl(daemon, "export", conv.id, "-o", str(export_file))
        assert done.returncode == 0, done.stderr
        args = ("verify-export", str(export_file), "--checkpoint", str(old_note), "--key", key)
        checked = ctl(daemon, "--json", *args)
        assert checked.returncode == 0, checked.stderr
        assert json.loads(checked.stdout)["events"] == 12  # created + 6 + 5
        text = export_file.read_text(encoding="utf-8").replace("later 3", "later X")
        export_file.write_text(text, encoding="utf-8")
        assert ctl(daemon, *args).returncode == 1
