"""`run_offline`: exit codes, human and JSON output, and a directory left exactly as it was."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
from pathlib import Path

import msgspec
import pytest

from tests.verifier.test_drift import drift_cases, sqlite3_cli
from tests.verifier.test_tamper import changed_value
from timelined.api.verify import VerifyReport
from timelined.verifier.offline import run_offline


def fingerprint(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under `root` (names included) with its content hash and mode."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        found[str(path.relative_to(root))] = (digest, st.st_mode)
    return found


def test_good_directory_exits_0_and_is_untouched(
    small_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = fingerprint(small_dir)
    assert run_offline(small_dir, as_json=False, progress=True) == 0
    assert fingerprint(small_dir) == before
    out = capsys.readouterr().out
    assert "result: OK" in out and "hash chain intact through seq" in out


def test_drifted_directory_exits_1_naming_the_entity_and_is_untouched(
    small_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = drift_cases(small_dir / "state.db")[0]
    sqlite3_cli(small_dir / "state.db", case.sql)
    before = fingerprint(small_dir)
    assert run_offline(small_dir, as_json=False, progress=False) == 1
    assert fingerprint(small_dir) == before
    out = capsys.readouterr().out
    assert "DRIFT" in out and f"block {case.id}" in out and "content" in out


def test_damaged_log_as_json(small_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seq, kind = changed_value(small_dir / "log")
    before = fingerprint(small_dir)
    assert run_offline(small_dir, as_json=True, progress=False) == 1
    assert fingerprint(small_dir) == before
    report = msgspec.json.decode(capsys.readouterr().out, type=VerifyReport)
    assert report.state == "damaged" and report.mode == "offline"
    assert report.chain is not None and report.chain.damage is not None
    assert (report.chain.damage.seq, report.chain.damage.kind) == (seq, kind)


def test_state_with_uncheckpointed_wal_is_read_from_a_copy(
    small_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crashed daemon leaves a -wal next to state.db: it is part of the state, and it stays."""
    db = small_dir / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("UPDATE focus SET context_id = NULL")
    conn.commit()
    # Leave the WAL behind as a crash would: copy the files while the connection is open.
    saved = {s: Path(f"{db}{s}").read_bytes() for s in ("", "-wal")}
    conn.close()
    for suffix, data in saved.items():
        Path(f"{db}{suffix}").write_bytes(data)
    before = fingerprint(small_dir)
    assert run_offline(small_dir, as_json=True, progress=False) == 1
    assert fingerprint(small_dir) == before
    report = msgspec.json.decode(capsys.readouterr().out, type=VerifyReport)
    assert any(d.entity == "focus" for d in report.differences)


def test_not_a_state_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_offline(tmp_path, as_json=False, progress=False) == 2
    assert "not a timelined state directory" in capsys.readouterr().err
    assert run_offline(tmp_path / "missing", as_json=True, progress=False) == 2
    assert json.loads(capsys.readouterr().out)["state"] == "cannot run"


def test_running_daemon_is_refused(small_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fd = os.open(small_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_offline(small_dir, as_json=False, progress=False) == 2
        assert "daemon is running" in capsys.readouterr().err
    finally:
        os.close(fd)
    assert run_offline(small_dir, as_json=False, progress=False) == 0


def test_a_lock_it_cannot_open_is_a_check_that_could_not_run(
    small_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (small_dir / "lock").unlink(missing_ok=True)
    (small_dir / "lock").symlink_to("lock")  # ELOOP; an unreadable lock fails the same way
    assert run_offline(small_dir, as_json=False, progress=False) == 2
    assert f"cannot read {small_dir / 'lock'}" in capsys.readouterr().err
    assert run_offline(small_dir, as_json=True, progress=False) == 2
    assert json.loads(capsys.readouterr().out)["state"] == "cannot run"


def test_an_os_error_while_checking_is_json_too(
    small_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> VerifyReport:
        raise PermissionError(13, "Permission denied", str(small_dir / "state.db"))

    monkeypatch.setattr("timelined.verifier.offline.verify_paths", refuse)
    assert run_offline(small_dir, as_json=True, progress=False) == 2
    out = capsys.readouterr()
    assert json.loads(out.out)["state"] == "cannot run" and "Permission denied" in out.err


def test_a_postgresql_store_it_cannot_reach_is_a_check_that_could_not_run(
    tmp_path: Path,
) -> None:
    """docs/operations.md: exit 2 prints only {"state": "cannot run", "error": ...}, not a
    "failed" report at seq -1 (the real command line, as an operator runs it)."""
    import subprocess
    import sys

    dsn = f"host={tmp_path / 'no-pg-here'} dbname=x"
    for as_json in (True, False):
        json_flag = ["--json"] if as_json else []
        done = subprocess.run(
            [sys.executable, "-m", "timelined", "verify", *json_flag, "--dsn", dsn],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "cannot connect" in done.stderr, done.stderr
        if as_json:
            result = json.loads(done.stdout)
            assert set(result) == {"state", "error"} and result["state"] == "cannot run"
            assert "cannot connect" in result["error"]
        else:
            assert done.stdout == "", done.stdout  # no report: "snapshot at seq -1" was one


def _timelined_verify(*argv: str, stdout: int, unbuffered: bool) -> tuple[int, str]:
    """`timelined verify ARGV` with stdout on the descriptor `stdout`: exit code and stderr."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "timelined", "verify", *argv],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        env=env,
    )
    return done.returncode, done.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_a_full_stdout_exits_74_with_one_line(small_dir: Path, unbuffered: bool) -> None:
    """`timelined verify > /dev/full` as `timelinectl status > /dev/full`: exit 74, one line on
    stderr (JSON with --json), no traceback."""
    for json_flag in ([], ["--json"]):
        with open("/dev/full", "w") as full:
            code, err = _timelined_verify(
                "--state-dir",
                str(small_dir),
                *json_flag,
                stdout=full.fileno(),
                unbuffered=unbuffered,
            )
        assert code == 74, err
        lines = err.splitlines()
        assert len(lines) == 1, err
        if json_flag:
            error = json.loads(lines[0])
            assert error["error"] == "timelined.CannotWrite"
            assert error["parameters"]["path"] == "<stdout>"
            assert "No space left on device" in error["parameters"]["message"]
        else:
            assert lines[0] == "timelined: cannot write stdout: No space left on device"


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_a_reader_that_closed_early_ends_verify_quietly_with_141(
    small_dir: Path, unbuffered: bool
) -> None:
    """`timelined verify | head -c1` whose reader is gone before the report: exit 141 (as a
    program SIGPIPE ended) and nothing on stderr. The read end is closed before the command
    starts, so its first write meets the closed pipe, whatever the report's size."""
    for json_flag in ([], ["--json"]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            code, err = _timelined_verify(
                "--state-dir", str(small_dir), *json_flag, stdout=write_end, unbuffered=unbuffered
            )
        finally:
            os.close(write_end)
        assert code == 141, err
        assert err == "", err
