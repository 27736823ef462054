"""A client holding a checkpoint catches a log rewritten (and re-hashed) behind the daemon.

A real daemon process: the client audits twice (trust on first use, then consistency); the
daemon stops; the log is rewritten from seq K with a valid chain (every hash recomputed, the
state and the clean-shutdown marker removed so that the boot rebuilds from the log); the daemon
restarts and boots cleanly on the forged log; the client's next audit raises HistoryRewritten,
`timelinectl audit --since` exits 1 naming it, and a witness refuses to co-sign.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from tests.daemon.harness import DaemonProcess, short_tempdir
from timelined.auditlog.reader import read_records
from timelined.auditlog.record import encode_record
from timelined.client import Client
from timelined.errors import FeatureUnavailable, HistoryRewritten
from timelined.events import BlockAppended
from timelined.transparency import audit as trust
from timelined.transparency import note as signed_note
from timelined.transparency.note import Verifier

K = 5  # the first rewritten seq


def _rewrite_log_from(state_dir: Path, k: int) -> None:
    log_dir = state_dir / "log"
    records = list(read_records(log_dir))
    lines: list[bytes] = []
    prev = records[k - 2].hash
    for r in records:
        if r.seq < k:
            lines.append(encode_record(r.seq, r.ts, r.actor, r.event, r.prev)[1])
            continue
        event = r.event
        if isinstance(event, BlockAppended):
            block = msgspec.structs.replace(event.block, content="a different past")
            event = msgspec.structs.replace(event, block=block)
        record, line = encode_record(r.seq, r.ts, r.actor, event, prev)
        prev = record.hash
        lines.append(line)
    for segment in log_dir.glob("*.jsonl"):
        segment.unlink()
    (log_dir / f"{1:020d}.jsonl").write_bytes(b"".join(lines))
    for name in ("state.db", "state.db-wal", "state.db-shm", "clean-shutdown"):
        (state_dir / name).unlink(missing_ok=True)


def _ctl(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "timelined.ctl", "--socket", str(daemon.socket_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_rewritten_past_is_caught_by_a_client_holding_a_checkpoint() -> None:
    with short_tempdir() as base:
        remembered = base / "remembered.json"
        daemon = DaemonProcess(base)
        with daemon, Client(daemon.socket_path) as client:
            conv = client.create_conversation("audited")
            appended = [
                client.append_block(conv.root_context_id, "user", f"block {i}") for i in range(10)
            ]
            first = client.audit(remembered)
            assert first.old_size is None and first.key_trusted_on_first_use
            key = client.get_checkpoint_key()
            client.append_block(conv.root_context_id, "user", "one more")
            second = client.audit(remembered)
            assert (second.old_size, second.new_size) == (first.new_size, first.new_size + 1)
            ctl_state = base / "ctl.json"
            done = _ctl(daemon, "--json", "audit", "--since", str(ctl_state), "--key", key)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["new_size"] == second.new_size
            # A block read with its proof: in the audited checkpoint, and the log's as read.
            block, proven = client.get_block_proven(appended[3].block.id, remembered)
            assert (block.content, proven.seq) == ("block 3", appended[3].seq)
            assert proven.tree_size == second.new_size
            second = client.audit(remembered)  # what prove_event audited: unchanged since
            proved = _ctl(daemon, "prove", "3")
            assert proved.returncode == 0 and "verified" in proved.stdout, proved.stderr
            # A witness co-signs what it saw extend the checkpoint it remembers.
            made = _ctl(daemon, "witness-key", "witness.example", "--out", str(base / "w.key"))
            assert made.returncode == 0, made.stderr
            assert (base / "w.key").stat().st_mode & 0o777 == 0o600
            witness_state = base / "witness.json"
            cosign = ("cosign", "--since", str(witness_state), "--witness-key", str(base / "w.key"))
            for _ in range(2):
                signed = _ctl(daemon, *cosign)
                assert signed.returncode == 0, signed.stderr
            cosigned = signed_note.parse(signed.stdout)
            assert cosigned.verified_by(Verifier.parse(made.stdout))
            assert cosigned.verified_by(Verifier.parse(key))
        assert (daemon.state_dir / "checkpoints" / f"{second.new_size:020d}.note").exists()

        _rewrite_log_from(daemon.state_dir, K)
        with daemon, Client(daemon.socket_path) as client:
            # The forged log is a valid chain: the daemon boots and signs it with its own key.
            note = client.get_checkpoint()
            forged = trust.open_signed(note, Verifier.parse(key)).checkpoint
            assert forged.size == second.new_size
            with pytest.raises(HistoryRewritten):
                client.get_block_proven(appended[3].block.id, remembered)
            with pytest.raises(HistoryRewritten) as caught:
                client.audit(remembered)
            assert caught.value.params["old_size"] == second.new_size
            done = _ctl(daemon, "--json", "audit", "--since", str(ctl_state))
            assert done.returncode == 1
            assert json.loads(done.stderr)["error"] == "io.timelined.Admin.HistoryRewritten"
            refused = _ctl(daemon, *cosign)
            assert refused.returncode == 1 and refused.stdout == ""
        # Nothing forged was remembered: the client still holds the true checkpoint.
        assert trust.load_remembered(remembered) == trust.Remembered(key, second.checkpoint)


def test_a_killed_daemon_extends_its_tree_from_the_log_at_boot() -> None:
    """SIGKILL loses the tree's unwritten hashes (never fsynced, by design): the next boot
    extends the tree from the log, and a client's audit finds it consistent."""
    with short_tempdir() as base:
        remembered = base / "remembered.json"
        daemon = DaemonProcess(base)
        with daemon, Client(daemon.socket_path) as client:
            conv = client.create_conversation("killed")
            client.append_block(conv.root_context_id, "user", "before the audit")
            first = client.audit(remembered)
            for i in range(20):
                client.append_block(conv.root_context_id, "user", f"after {i}")
            daemon.kill()
        leaves = (daemon.state_dir / "tree" / "level-00").stat().st_size // 32
        assert leaves < first.new_size + 20  # the hashes since the checkpoint were not written
        with daemon, Client(daemon.socket_path) as client:
            second = client.audit(remembered)
            assert (second.old_size, second.new_size) == (first.new_size, first.new_size + 20)
            assert "extending the Merkle tree" in daemon.log()


def test_a_log_damaged_before_its_tail_still_boots_without_checkpoints() -> None:
    """The tree is rebuilt from the log at boot; a log damaged in the middle (which the boot's
    tail scan does not read: the verifier finds it) must not stop the daemon: it serves, and
    the checkpoint methods answer FeatureUnavailable."""
    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        with daemon, Client(daemon.socket_path) as client:
            conv = client.create_conversation("damaged")
            for i in range(5):
                client.append_block(conv.root_context_id, "user", f"block {i}")
        segment = next((daemon.state_dir / "log").glob("*.jsonl"))
        lines = segment.read_bytes().splitlines(keepends=True)
        lines[2] = lines[2].replace(b"block 1", b"block X")  # its hash no longer matches
        segment.write_bytes(b"".join(lines))
        shutil.rmtree(daemon.state_dir / "tree")
        (daemon.state_dir / "clean-shutdown").unlink()
        with daemon, Client(daemon.socket_path) as client:
            assert client.get_status().last_seq == 6
            with pytest.raises(FeatureUnavailable):
                client.get_checkpoint()
        assert "serving without the Merkle tree" in daemon.log()


def test_a_proof_asked_right_after_an_append_covers_it() -> None:
    """Read-your-writes for proofs: the tree hashes committed lines only when read (a bounded
    few wait), so each read must take in every answered append first."""
    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        with daemon, Client(daemon.socket_path) as client:
            conv = client.create_conversation("proven")
            for i in range(3):
                appended = client.append_block(conv.root_context_id, "user", f"block {i}")
                assert client.get_inclusion_proof(appended.seq).tree_size == appended.seq
                proven = client.prove_event(appended.seq, base / "remembered.json")
                assert (proven.seq, proven.tree_size) == (appended.seq, appended.seq)
                client.append_block(conv.root_context_id, "user", f"then {i}")
                old, new = appended.seq, appended.seq + 1
                assert len(client.get_consistency_proof(old, new)) >= 1
