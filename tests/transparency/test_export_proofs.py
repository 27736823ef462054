"""An export carries a signed checkpoint and each event's inclusion proof, so it can be proven
against a checkpoint obtained elsewhere (issue 19; docs/transparency.md, "Exports").

Real daemon processes: the export is taken right after appends (the tree is extended after the
commit's reply: the export waits for it), checked by the client and by
`timelinectl verify-export`; an edited event line fails naming its seq; another daemon's
checkpoint fails; a document without proofs (as before) still imports.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import cast

import anyio
import msgspec
import pytest

from tests.daemon.harness import DaemonProcess, short_tempdir
from tests.transparency.test_end_to_end import _ctl
from timelined.api.exchange import ExportPart
from timelined.auditlog.record import peek_seq
from timelined.client import Client
from timelined.daemon import exportproofs
from timelined.errors import CheckpointInvalid, HistoryRewritten
from timelined.transparency import exportcheck
from timelined.transparency.merkle import MemoryTree, inclusion_proof
from timelined.treestore.service import Transparency


def _write(path: Path, parts: list[ExportPart]) -> None:
    path.write_bytes(b"".join(msgspec.json.encode(p) + b"\n" for p in parts))


def _conversation(client: Client, name: str, blocks: int) -> str:
    conv = client.create_conversation(name)
    for i in range(blocks):
        client.append_block(conv.root_context_id, "user", f"{name} block {i}")
    return conv.id


def _checkpoint_past(client: Client, size: int) -> str:
    """A checkpoint of a tree larger than `size` (the tree is extended after a commit's reply:
    GetCheckpoint right after an append may not hold it yet)."""
    deadline = time.monotonic() + 10
    while True:
        note = client.get_checkpoint()
        if int(note.split("\n", 2)[1]) > size or time.monotonic() > deadline:
            return note
        time.sleep(0.01)


def test_an_export_is_proven_against_a_checkpoint_obtained_elsewhere() -> None:
    with short_tempdir() as base, DaemonProcess(base) as daemon, Client(daemon.socket_path) as c:
        key = c.get_checkpoint_key()
        _conversation(c, "other", 3)  # events of another conversation interleave
        conv_id = _conversation(c, "proven", 6)
        earlier = c.get_checkpoint()  # smaller than the export's: a consistency proof
        c.append_block(c.get_conversation(conv_id).root_context_id, "user", "the last")
        parts = list(c.export_conversation(conv_id))  # at once: the tree may lag the reply
        end = parts[-1].end
        assert end is not None and end.checkpoint is not None
        events = [line for p in parts for line in p.events or ()]
        proofs = [proof for p in parts for proof in p.proofs or ()]
        assert [p.seq for p in proofs] == [peek_seq(e.encode()) for e in events]
        assert len(events) == 8  # created + 6 + the last, nothing of "other"

        result = c.verify_export(parts, earlier, key)
        assert result.events == 8 and result.other_size < result.tree_size
        assert c.verify_export(parts, end.checkpoint, key).other_size == result.tree_size
        c.append_block(c.get_conversation(conv_id).root_context_id, "user", "after")
        later = _checkpoint_past(c, result.tree_size)  # the export's is a prefix of it
        assert c.verify_export(parts, later, key).other_size > result.tree_size
        # Offline, sizes differing and no consistency proof given: refused, not assumed.
        with pytest.raises(HistoryRewritten):
            exportcheck.verify_export(parts, earlier, key)

        export_file, cp_file = base / "export.jsonl", base / "cp.note"
        done = _ctl(daemon, "export", conv_id, "-o", str(export_file))
        assert done.returncode == 0, done.stderr
        cp_file.write_text(c.get_checkpoint(), encoding="utf-8")
        args = ("verify-export", str(export_file), "--checkpoint", str(cp_file), "--key", key)
        human = _ctl(daemon, *args)
        assert human.returncode == 0, human.stderr
        assert "9 events proven" in human.stdout and "verified" in human.stdout
        as_json = _ctl(daemon, "--json", *args)
        assert as_json.returncode == 0, as_json.stderr
        assert json.loads(as_json.stdout)["events"] == 9

        # One edited event line: the first edited seq is named, by the client and timelinectl.
        lines = export_file.read_text(encoding="utf-8").splitlines()
        victim = next(i for i, line in enumerate(lines) if "proven block 2" in line)
        lines[victim] = lines[victim].replace("proven block 2", "proven block X")
        export_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        edited = [msgspec.json.decode(line, type=ExportPart) for line in lines]
        bad_seq = next(
            peek_seq(e.encode()) for p in edited for e in p.events or () if "block X" in e
        )
        with pytest.raises(CheckpointInvalid, match=rf"event {bad_seq}:"):
            c.verify_export(edited, c.get_checkpoint(), key)
        failed = _ctl(daemon, "--json", *args)
        assert failed.returncode == 1, failed.stderr
        error = json.loads(failed.stderr)
        assert error["error"].endswith("CheckpointInvalid")
        assert f"event {bad_seq}:" in error["parameters"]["reason"]
        assert f"event {bad_seq}" in _ctl(daemon, *args).stderr


def test_a_checkpoint_of_another_log_does_not_prove_an_export() -> None:
    with (
        short_tempdir() as base_a,
        short_tempdir() as base_b,
        DaemonProcess(base_a) as a,
        DaemonProcess(base_b) as b,
        Client(a.socket_path) as ca,
        Client(b.socket_path) as cb,
    ):
        conv_id = _conversation(ca, "mine", 3)
        _conversation(cb, "theirs", 3)
        parts = list(ca.export_conversation(conv_id))
        key_a, key_b = ca.get_checkpoint_key(), cb.get_checkpoint_key()
        theirs = cb.get_checkpoint()
        assert ca.verify_export(parts, ca.get_checkpoint(), key_a).events == 4
        with pytest.raises(CheckpointInvalid):  # not signed by this log's key
            ca.verify_export(parts, theirs, key_a)
        with pytest.raises(CheckpointInvalid):  # the export's own is not B's
            ca.verify_export(parts, theirs, key_b)


def test_a_document_without_checkpoint_and_proofs_still_imports() -> None:
    with short_tempdir() as base, DaemonProcess(base) as daemon, Client(daemon.socket_path) as c:
        conv_id = _conversation(c, "old style", 3)
        parts = list(c.export_conversation(conv_id))
        assert any(p.proofs for p in parts)
        old = [
            msgspec.structs.replace(
                p, end=msgspec.structs.replace(p.end, checkpoint=None) if p.end else None
            )
            for p in parts
            if p.proofs is None
        ]
        old_file = base / "old.jsonl"
        _write(old_file, old)
        assert b"checkpoint" not in old_file.read_bytes() and b"proofs" not in old_file.read_bytes()
        done = _ctl(daemon, "import", str(old_file))
        assert done.returncode == 0, done.stderr
        assert c.import_conversation(parts).name == "old style"  # and a new one, proofs and all
        with pytest.raises(CheckpointInvalid, match="no checkpoint"):
            c.verify_export(old, c.get_checkpoint(), c.get_checkpoint_key())


class _Tree:
    """Transparency's inclusion lookup over an in-memory tree."""

    def __init__(self, size: int) -> None:
        self.tree = MemoryTree()
        for i in range(size):
            self.tree.append(f"line {i}".encode())

    def inclusion(self, index: int, size: int) -> list[str]:
        proof = inclusion_proof(self.tree, index, size)
        return [base64.b64encode(h).decode() for h in proof]


def test_proof_parts_stay_within_the_reply_limit() -> None:
    limit = 4096
    seqs = list(range(1, 301, 2))

    async def collect() -> list[ExportPart]:
        service = cast(Transparency, _Tree(300))
        return [p async for p in exportproofs.proof_parts(service, seqs, 300, limit)]

    parts = anyio.run(collect)
    assert len(parts) > 1
    for part in parts:  # the reply around a part: {"parameters":{...},"continues":true}\0
        assert len(msgspec.json.encode({"parameters": part, "continues": True})) + 1 <= limit
    assert [p.seq for part in parts for p in part.proofs or ()] == seqs


def test_with_fsync_off_an_export_goes_out_at_once_without_a_checkpoint() -> None:
    # Checkpoints cover only the fsynced log, which fsync "off" moves only at a stop: waiting
    # for it would hold every export for the whole bound, to end without a checkpoint anyway.
    with (
        short_tempdir() as base,
        DaemonProcess(base, log={"fsync": "off"}) as daemon,
        Client(daemon.socket_path) as c,
    ):
        conv_id = _conversation(c, "unsynced", 2)
        parts = list(c.export_conversation(conv_id))
        end = parts[-1].end
        assert end is not None and end.checkpoint is None
        assert not any(p.proofs for p in parts)
        assert "did not reach" not in daemon.log()
        assert c.import_conversation(parts).name == "unsynced"
