"""The Merkle tree with two daemons on one PostgreSQL database (each keeps its own tree, fed by
its commit subscribers with every event of the database, and caught up from the log table at
boot): the two trees are one tree (equal roots at equal sizes), each daemon proves the other's
events, a daemon restarted after the other wrote catches up, and the verifier checks a daemon's
local tree against the log table. One daemon's proofs on both backends:
tests/contract/test_transparency.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.daemon.harness import DaemonProcess, serving, short_tempdir
from timelined.client import AsyncClient, Client
from timelined.errors import CheckpointInvalid, InvalidArgument
from timelined.transparency import audit as trust
from timelined.transparency.checkpoint import Checkpoint
from timelined.transparency.merkle import verify_consistency
from timelined.treestore.logtree import REBUILD_MARK


def _store(dsn: str) -> dict[str, Any]:
    return {"backend": "postgresql", "dsn": dsn}


def _lines(client: Client, upto: int) -> list[bytes]:
    """Log lines 1..upto as the daemon reads them (ReadLog), newline excluded."""
    lines: list[bytes] = []
    while len(lines) < upto:
        events = client.read_log(after_seq=len(lines), limit=upto - len(lines)).events
        assert events, f"the log ends at {len(lines)}"
        lines += [bytes(e) for e in events]
    return lines


def _open(client: Client, note: str | None = None) -> trust.SignedCheckpoint:
    return trust.open_signed(
        note or client.get_checkpoint(), trust.parse_verifier(client.get_checkpoint_key())
    )


def _cp(signed: trust.SignedCheckpoint) -> Checkpoint:
    return signed.checkpoint


def test_two_daemons_keep_one_tree_and_prove_each_others_events(pg_dsn: str) -> None:
    with (
        serving(store=_store(pg_dsn)) as a,
        serving(store=_store(pg_dsn)) as b,
        Client(a.socket_path) as ca,
        Client(b.socket_path) as cb,
    ):
        conv = ca.create_conversation("shared")
        ctx = conv.root_context_id
        by_a: list[int] = []
        by_b: list[int] = []
        for i in range(6):
            # Interleaved: each daemon's batch follows one of the other's that its tree has not
            # been given yet. Its tree reads still hold everything it acknowledged.
            by_a.append(ca.append_block(ctx, "user", f"a {i}").seq)
            assert _cp(_open(ca)).size >= by_a[-1]
            ca.get_inclusion_proof(by_a[-1])
            by_b.append(cb.append_block(ctx, "user", f"b {i}").seq)
            assert _cp(_open(cb)).size >= by_b[-1]
            cb.get_inclusion_proof(by_b[-1])
        head = by_b[-1]
        # Every event committed in the database before the call: the other daemon's too.
        sa, sb = _open(ca), _open(cb)
        assert _cp(sa).size == _cp(sb).size == head
        assert _cp(sa).root == _cp(sb).root  # one tree, two signers
        lines = _lines(ca, head)
        for seq in by_b:  # daemon A proves what daemon B wrote, against A's checkpoint
            proof = ca.get_inclusion_proof(seq, head)
            trust.check_inclusion(sa, seq, lines[seq - 1], proof.hashes)
        for seq in by_a:
            trust.check_inclusion(sb, seq, lines[seq - 1], cb.get_inclusion_proof(seq).hashes)

        # B's later checkpoint extends A's earlier one, by B's consistency proof.
        for i in range(3):
            ca.append_block(ctx, "user", f"more {i}")
        later = _open(cb)
        assert _cp(later).size == head + 3
        hashes = trust.decode_hashes(cb.get_consistency_proof(head, head + 3))
        verify_consistency(head, head + 3, _cp(sa).root, _cp(later).root, hashes)
        # A's export of a conversation B wrote to last carries A's checkpoint and proofs.
        last = cb.append_block(ctx, "user", "b last").seq
        parts = list(ca.export_conversation(conv.id))
        end = parts[-1].end
        assert end is not None and end.checkpoint is not None
        proven = ca.verify_export(parts, end.checkpoint, ca.get_checkpoint_key())
        assert proven.events == last and proven.tree_size >= last
        # The same trees at each size: A's root at every size equals B's.
        for size in (1, head // 2, head, head + 3):
            pa = ca.get_consistency_proof(size, head + 4)
            pb = cb.get_consistency_proof(size, head + 4)
            assert pa == pb


def test_a_restarted_daemon_catches_its_tree_up_from_the_table(pg_dsn: str) -> None:
    with short_tempdir() as base, serving(store=_store(pg_dsn)) as b, Client(b.socket_path) as cb:
        (base / "a").mkdir()
        a = DaemonProcess(base / "a", store=_store(pg_dsn))
        remembered = base / "remembered.json"
        with a, Client(a.socket_path) as ca:
            conv = ca.create_conversation("restarted")
            for i in range(4):
                ca.append_block(conv.root_context_id, "user", f"a {i}")
            first = ca.audit(remembered)
            key = ca.get_checkpoint_key()
        for i in range(30):  # A is stopped: its tree hears nothing of these
            cb.append_block(conv.root_context_id, "user", f"b {i}")
        head = cb.get_status().last_seq
        with a, Client(a.socket_path) as ca:
            second = ca.audit(remembered, key)  # A's new checkpoint extends its old one
            assert (second.old_size, second.new_size) == (first.new_size, head)
            assert _cp(_open(ca)).root == _cp(_open(cb)).root
            lines = _lines(ca, head)
            signed = _open(ca)
            trust.check_inclusion(signed, head, lines[-1], ca.get_inclusion_proof(head).hashes)
        assert f"extending the Merkle tree from seq {first.new_size + 1} to {head}" in a.log()


def _flip(tree_dir: Path, level: int, index: int) -> None:
    path = tree_dir / f"level-{level:02d}"
    data = bytearray(path.read_bytes())
    data[index * 32] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_verifier_finds_a_tampered_tree_against_the_log_table(pg_dsn: str) -> None:
    with short_tempdir() as base:
        daemon = DaemonProcess(base, store=_store(pg_dsn))
        tree_dir = daemon.state_dir / "tree"
        with daemon, Client(daemon.socket_path) as client:
            conv = client.create_conversation("tree")
            for i in range(20):
                client.append_block(conv.root_context_id, "user", f"block {i}")
            result = client.verify(wait=True).result
            assert result is not None and result["state"] == "ok", result
            assert result["tree"] == {**result["tree"], "state": "ok", "size": 21}
            client.audit(base / "audited.json")
        _flip(tree_dir, 1, 3)  # the node over leaves 6 and 7: the boot's last-leaf check passes
        with daemon, Client(daemon.socket_path) as client:
            result = client.verify(wait=True).result
            assert result is not None and result["state"] == "drift", result
            tree = result["tree"]
            assert (tree["state"], tree["level"], tree["index"], tree["first_bad_leaf"]) == (
                "mismatch",
                1,
                3,
                6,
            )
            assert "Merkle tree differs from the log at leaf 6" in result["summary"]
            assert client.get_status().verify["tree"] == "mismatch"
            assert (tree_dir / REBUILD_MARK).exists()
            client.repair()  # the state from the table, the tree from the table
            again = client.verify(wait=True).result
            assert again is not None and again["state"] == "ok", again
            assert again["tree"] == {**again["tree"], "state": "ok", "size": 21}
            client.append_block(conv.root_context_id, "user", "after the rebuild")
            client.audit(base / "audited.json")  # the rebuilt tree extends the old checkpoint


WRITERS = 8  # per daemon
ROUNDS = 15


async def _append_and_prove(socket: Path, context_id: str, name: str, problems: list[str]) -> None:
    async with AsyncClient(socket) as client:
        for i in range(ROUNDS):
            done = await client.append_block(context_id, "user", f"{name} {i}")
            try:
                await client.get_inclusion_proof(done.seq)
            except InvalidArgument as exc:
                problems.append(f"{name}: event {done.seq}: {exc.params}")


async def _both_write(sockets: list[Path], problems: list[str]) -> None:
    async with AsyncClient(sockets[0]) as first:
        root = (await first.create_conversation("busy")).root_context_id
    async with anyio.create_task_group() as tg:
        for s, socket in enumerate(sockets):
            for n in range(WRITERS):
                tg.start_soon(_append_and_prove, socket, root, f"d{s}w{n}", problems)


def test_each_daemon_proves_its_writes_at_once_while_the_other_writes(pg_dsn: str) -> None:
    """A daemon's batch that follows the other's events reaches its tree only after the
    follower read those: its tree reads must wait for that, as its state reads wait for the
    commit (an inclusion proof of one's own acknowledged event never fails)."""
    with serving(store=_store(pg_dsn)) as a, serving(store=_store(pg_dsn)) as b:
        problems: list[str] = []
        anyio.run(_both_write, [a.socket_path, b.socket_path], problems)
        assert not problems, f"{len(problems)} proofs refused, e.g. {problems[:3]}"


def test_daemons_sharing_one_key_sign_interchangeable_checkpoints(pg_dsn: str) -> None:
    """Each daemon signs with its own key unless given one: a client remembering daemon A's
    checkpoint refuses B's (another key). Daemons given the same key (copied before their first
    boot) sign one log: the client audits whichever daemon it reaches (docs/operations.md)."""
    with (
        short_tempdir() as base,
        serving(store=_store(pg_dsn)) as a,
        serving(store=_store(pg_dsn)) as b,
        Client(a.socket_path) as ca,
        Client(b.socket_path) as cb,
    ):
        conv = ca.create_conversation("keys")
        ca.append_block(conv.root_context_id, "user", "one")
        ca.audit(base / "a.json")
        with pytest.raises(CheckpointInvalid):
            cb.audit(base / "a.json")
        (base / "c").mkdir()
        c = DaemonProcess(base / "c", store=_store(pg_dsn))
        shutil.copytree(a.state_dir / "keys", c.state_dir / "keys")
        with c, Client(c.socket_path) as cc:
            assert cc.get_checkpoint_key() == ca.get_checkpoint_key()
            cb.append_block(conv.root_context_id, "user", "two")
            done = cc.audit(base / "a.json")  # C's checkpoint extends A's: one signer, one log
            assert done.new_size == done.old_size + 1
            assert ca.audit(base / "a.json").new_size == done.new_size
