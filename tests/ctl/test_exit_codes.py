"""timelinectl's exit codes for files it cannot write or read and for a stdout that fails: a
named error on stderr and the documented code, never a traceback (real subprocess runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import DaemonProcess
from timelined.client import Client

TIMELINECTL = Path(sys.executable).with_name("timelinectl")
EX_CANTCREAT = 73
EX_IOERR = 74


def _run(
    daemon: DaemonProcess, *argv: str, stdout: Any = subprocess.PIPE, unbuffered: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIMELINED_SOCKET": str(daemon.socket_path)}
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run(
        [str(TIMELINECTL), *argv],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        env=env,
    )


def _no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr


def test_a_checkpoint_or_key_file_that_cannot_be_written_exits_73(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-dir" / "x.json"
    done = _run(daemon, "audit", "--since", str(missing))
    _no_traceback(done)
    assert done.returncode == EX_CANTCREAT, done.stderr
    assert f"cannot write {missing}" in done.stderr
    done = _run(daemon, "--json", "audit", "--since", str(missing))
    assert done.returncode == EX_CANTCREAT, done.stderr
    error = json.loads(done.stderr)
    assert error["error"] == "timelinectl.CannotWrite"
    assert error["parameters"]["path"] == str(missing)

    key = tmp_path / "witness.key"
    assert _run(daemon, "witness-key", "w1", "--out", str(key)).returncode == 0
    done = _run(daemon, "cosign", "--since", str(missing), "--witness-key", str(key))
    _no_traceback(done)
    assert done.returncode == EX_CANTCREAT, done.stderr
    assert f"cannot write {missing}" in done.stderr

    out = tmp_path / "no-such-dir" / "k"
    done = _run(daemon, "witness-key", "w2", "--out", str(out))
    _no_traceback(done)
    assert done.returncode == EX_CANTCREAT, done.stderr
    assert f"cannot write {out}" in done.stderr
    assert not missing.parent.exists()


def _refuses_to_read_since(daemon: DaemonProcess, since: Path, reason: str) -> None:
    """audit and cosign with `--since since`: exit 66 (EX_NOINPUT), "cannot read", not 73."""
    key = since.with_name("witness.key")
    assert _run(daemon, "witness-key", "w5", "--out", str(key)).returncode == 0
    for verb in (["audit"], ["cosign", "--witness-key", str(key)]):
        done = _run(daemon, *verb, "--since", str(since))
        _no_traceback(done)
        assert done.returncode == 66, done.stderr
        assert done.stderr == f"timelinectl: cannot read {since}: {reason}\n"
        done = _run(daemon, "--json", *verb, "--since", str(since))
        assert done.returncode == 66, done.stderr
        error = json.loads(done.stderr)
        assert error["error"] == "timelinectl.CannotRead"
        assert error["parameters"]["path"] == str(since)


def test_a_since_file_that_cannot_be_read_exits_66_not_73(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    since = tmp_path / "a-directory"
    since.mkdir()
    _refuses_to_read_since(daemon, since, "Is a directory")
    assert list(since.iterdir()) == []  # nothing written beside or into it


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_a_since_file_without_read_permission_exits_66(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    since = tmp_path / "since.json"
    assert _run(daemon, "audit", "--since", str(since)).returncode == 0
    remembered = since.read_bytes()
    since.chmod(0o000)
    try:
        _refuses_to_read_since(daemon, since, "Permission denied")
    finally:
        since.chmod(0o644)
    assert since.read_bytes() == remembered


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_a_full_stdout_exits_74_with_one_line(
    daemon: DaemonProcess, client: Client, unbuffered: bool
) -> None:
    conv = client.create_conversation("to a full disk")
    client.append_block(conv.root_context_id, "user", "hello")
    for argv in (
        ["status"],
        ["--json", "status"],
        ["log", "--all"],
        ["--json", "log", "--all"],
        ["export", conv.id],
        ["checkpoint"],
    ):
        with open("/dev/full", "w") as full:
            done = _run(daemon, *argv, stdout=full, unbuffered=unbuffered)
        _no_traceback(done)
        assert done.returncode == EX_IOERR, (argv, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1, (argv, done.stderr)
        if "--json" in argv:
            error = json.loads(lines[0])
            assert error["error"] == "timelinectl.CannotWrite"
            assert "No space left on device" in error["parameters"]["message"]
        else:
            assert lines[0] == "timelinectl: cannot write stdout: No space left on device"


def test_prove_past_the_tree_reports_the_daemons_invalid_argument(
    daemon: DaemonProcess, client: Client
) -> None:
    """docs/transparency.md: a size beyond the tree is InvalidArgument (exit 65, bad data),
    not a checkpoint that does not verify (CheckpointInvalid, exit 1)."""
    client.create_conversation("to prove")
    done = _run(daemon, "prove", "99999")
    _no_traceback(done)
    assert done.returncode == 65, done.stderr
    assert "io.timelined.Admin.InvalidArgument" in done.stderr, done.stderr
    assert "leaf index 99998 is not below the tree size" in done.stderr
    done = _run(daemon, "--json", "prove", "99999")
    assert done.returncode == 65, done.stderr
    error = json.loads(done.stderr)
    assert error["error"] == "io.timelined.Admin.InvalidArgument"
    assert error["parameters"]["parameter"] == "seq"
    assert _run(daemon, "prove", "1").returncode == 0


def test_a_missing_witness_key_exits_66_an_existing_key_file_73(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    since = tmp_path / "since.json"
    done = _run(daemon, "cosign", "--since", str(since), "--witness-key", str(tmp_path / "no-key"))
    _no_traceback(done)
    assert done.returncode == 66, done.stderr  # EX_NOINPUT, as verify-export and import
    assert "cannot read the witness key" in done.stderr
    done = _run(
        daemon, "--json", "cosign", "--since", str(since), "--witness-key", str(tmp_path / "nk")
    )
    assert done.returncode == 66 and json.loads(done.stderr)["error"] == "timelinectl.CannotRead"
    assert not since.exists()  # refused before the audit: nothing remembered

    key = tmp_path / "w.key"
    key.write_text("precious\n")
    done = _run(daemon, "witness-key", "w3", "--out", str(key))
    assert done.returncode == EX_CANTCREAT, done.stderr  # EX_CANTCREAT, not a usage error
    assert "keys are never overwritten" in done.stderr
    done = _run(daemon, "--json", "witness-key", "w3", "--out", str(key))
    assert done.returncode == EX_CANTCREAT
    assert json.loads(done.stderr)["error"] == "timelinectl.CannotWrite"
    assert key.read_text() == "precious\n"


def test_a_malformed_witness_key_exits_65_naming_the_file_and_the_problem(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A key file that was read but holds no signer key is bad data (EX_DATAERR), not a bad
    command line; the message never shows the key's secret."""
    good = tmp_path / "good.key"
    made = _run(daemon, "witness-key", "w4", "--out", str(good))
    assert made.returncode == 0, made.stderr
    secret = good.read_text().strip()
    seed = secret.split("+", 4)[4]  # PRIVATE+KEY+NAME+ID+BASE64: base64 may hold "+" itself
    since = tmp_path / "since.json"
    for content, problem in (
        (made.stdout.encode(), "not a signer key"),  # the verifier key printed, not the file
        (secret[:-6].encode() + b"!!!!!!\n", "the key is not base64"),  # a damaged copy
        (b"PRIVATE+KEY+w4+\xff\n", "not ASCII text (byte 0xff at offset 15)"),
    ):
        key = tmp_path / "bad.key"
        key.write_bytes(content)
        done = _run(daemon, "cosign", "--since", str(since), "--witness-key", str(key))
        _no_traceback(done)
        assert done.returncode == 65, done.stderr
        assert f"the witness key {key} is malformed: {problem}" in done.stderr, done.stderr
        assert seed[:-6] not in done.stderr
        done = _run(daemon, "--json", "cosign", "--since", str(since), "--witness-key", str(key))
        assert done.returncode == 65, done.stderr
        error = json.loads(done.stderr)
        assert error["error"] == "timelinectl.BadWitnessKey"
        assert error["parameters"]["path"] == str(key)
        assert error["parameters"]["problem"].startswith(problem)
    assert not since.exists()  # refused before the audit: nothing remembered


def test_the_export_parts_are_all_named_in_the_help_and_the_readme() -> None:
    """`export --help` and the README's export line name every part of an export (proofs too:
    docs/interfaces.md), in order."""
    import re

    from timelined.api.exchange import ExportPart

    parts = list(ExportPart.__struct_fields__)
    done = subprocess.run(
        [str(TIMELINECTL), "export", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert ", ".join(parts) in " ".join(done.stdout.split()), done.stdout
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    line = re.search(r"export conv_\.\.\. > \S+ +# one part per line: (.*?)\(", readme, re.S)
    assert line is not None
    named = " ".join(line.group(1).replace("#", " ").split()).rstrip(", ")
    assert named == ", ".join(parts), named
