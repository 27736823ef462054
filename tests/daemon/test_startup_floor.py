"""What a daemon does before READY: only what serving needs (docs/performance.md, "The start-up
floor"). Imports that only some paths use and the checkpoint key wait until after READY."""

from __future__ import annotations

import re

import pytest

from tests.daemon.harness import DaemonProcess, short_tempdir
from timelined.client import Client
from timelined.daemon.varlink_setup import project_url
from timelined.errors import FeatureUnavailable
from timelined.transparency.note import Verifier

# Each of these is used only after READY, or only on another configuration: the checkpoint key
# (cryptography and what signs), GetInfo's URL (importlib.metadata), the interface check
# (difflib), PostgreSQL, the verifier (started after READY), the adapters and timelinectl.
NOT_BEFORE_READY = (
    "cryptography",
    "importlib.metadata",
    "difflib",
    "psycopg",
    "psycopg_pool",
    "timelined.transparency.note",
    "timelined.treestore.signing",
    "timelined.pgstore",
    "timelined.writer.pg",
    "timelined.verifier",
    "timelined.integrations",
    "timelined.ctl",
)
_IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", re.M)


def _is_under(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_an_sqlite_daemon_imports_nothing_before_ready_that_only_later_paths_need(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # -X importtime for the daemon: its lines and the daemon's own log share its stderr, in
    # order, so what precedes "serving on" (logged right after READY) was imported before it.
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        with daemon, Client(daemon.socket_path) as client:
            key = client.get_checkpoint_key()  # created after READY, there when asked
            info = client.get_info()
        log = daemon.log()
        pub = (daemon.state_dir / "keys" / "checkpoint.pub").read_text().strip()
    before, ready, after = log.partition("serving on ")
    assert ready, log[-2000:]
    early = _IMPORTED.findall(before)
    assert "timelined.daemon.lifecycle" in early  # the lines are there to read
    assert sorted(m for m in early if _is_under(m, NOT_BEFORE_READY)) == []
    later = _IMPORTED.findall(after)
    assert "cryptography" in later and "importlib.metadata" in later  # …and were needed after
    assert Verifier.parse(key).name == Verifier.parse(pub).name and key == pub
    assert info.url == project_url()


@pytest.mark.parametrize(
    "damaged", [b"PRIVATE+KEY+damaged\n", b"PRIVATE+KEY+\xff\xfe\n"], ids=["base64", "not-ascii"]
)
def test_a_key_that_cannot_be_used_stops_only_the_signing(damaged: bytes) -> None:
    """The key is read after READY: a damaged one is logged, the checkpoint methods answer
    FeatureUnavailable, and the daemon serves everything else, the tree's proofs included."""
    with short_tempdir() as base:
        daemon = DaemonProcess(base)
        with daemon, Client(daemon.socket_path) as client:
            conv = client.create_conversation("key")
            client.append_block(conv.root_context_id, "user", "hello")
        (daemon.state_dir / "keys" / "checkpoint.key").write_bytes(damaged)
        with daemon, Client(daemon.socket_path) as client:
            with pytest.raises(FeatureUnavailable, match="checkpoint key"):
                client.get_checkpoint()
            with pytest.raises(FeatureUnavailable, match="checkpoint key"):
                client.get_checkpoint_key()
            proof = client.get_inclusion_proof(2)
            assert (proof.leaf_index, proof.tree_size) == (1, 2)
            client.append_block(conv.root_context_id, "user", "still served")
            assert daemon.stop() == 0
        assert daemon.log().count("serving without signed checkpoints") == 1
        assert (daemon.state_dir / "clean-shutdown").exists()
