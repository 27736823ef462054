"""The `timelined` command line besides `serve`: check-config, and its sysexits usage errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from timelined import client_common as client


def _timelined(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "timelined", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_check_config_json_prints_the_resolved_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path / "var"}"\n')
    out = _timelined("check-config", "--config", str(config), "--json")
    assert out.returncode == 0, out.stderr
    resolved = json.loads(out.stdout)
    assert resolved["state_dir"] == str(tmp_path / "var")
    assert resolved["log"]["fsync"] == "always"


def test_check_config_refuses_a_bad_value_with_78_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[log]\nfsync = "sometimes"\n')
    out = _timelined("check-config", "--config", str(config))
    assert out.returncode == 78 and "log.fsync" in out.stderr, out.stderr
    out = _timelined("check-config", "--config", str(config), "--json")
    error = json.loads(out.stderr)
    assert out.returncode == 78 and error["error"] == "io.timelined.Admin.ConfigError", out.stderr
    assert error["parameters"]["key"] == "log.fsync"


def test_a_bad_command_line_exits_64() -> None:
    out = _timelined("backup", "--state-dir")
    assert out.returncode == 64 and "expected one argument" in out.stderr
    out = _timelined("no-such-verb")
    assert out.returncode == 64 and "invalid choice" in out.stderr
    out = _timelined("verify", "--json")  # --state-dir missing, asked for as JSON
    error = json.loads(out.stderr)
    assert out.returncode == 64 and error["error"] == "timelined.UsageError"
    assert "--state-dir" in error["parameters"]["message"]


def test_the_client_finds_the_systemd_socket_without_a_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIMELINED_SOCKET", raising=False)
    monkeypatch.delenv("TIMELINED_CONFIG", raising=False)
    monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./config.toml here
    fake = tmp_path / "run" / "timelined.sock"
    monkeypatch.setattr(client, "SYSTEMD_SOCKET", fake)
    assert client.socket_path() == tmp_path / "var" / "timelined.sock"  # not there: the default
    fake.parent.mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(fake))
    try:
        assert client.socket_path() == fake
        (tmp_path / "config.toml").write_text('[daemon]\nsocket_path = "mine.sock"\n')
        assert client.socket_path() == tmp_path / "mine.sock"  # a config file wins
        assert client.socket_path("explicit.sock") == Path("explicit.sock")
    finally:
        listener.close()


def test_a_service_socket_this_user_may_not_see_is_still_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Unreadable(type(Path())):  # type: ignore[misc]
        def is_socket(self) -> bool:
            raise PermissionError(13, "Permission denied")

    monkeypatch.delenv("TIMELINED_SOCKET", raising=False)
    monkeypatch.delenv("TIMELINED_CONFIG", raising=False)
    monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    hidden = Unreadable("/run/timelined/timelined.sock")
    monkeypatch.setattr(client, "SYSTEMD_SOCKET", hidden)
    assert client.socket_path() == hidden  # connecting then fails with EACCES: exit 77


def test_serve_on_a_state_directory_it_cannot_use_exits_70_naming_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("")  # a file where the state directory should be
    config = tmp_path / "config.toml"
    config.write_text(f'[daemon]\nstate_dir = "{state}"\nsocket_path = "{tmp_path / "s"}"\n')
    out = _timelined("serve", "--config", str(config))
    assert out.returncode == 70, out.stderr
    assert "Traceback" not in out.stderr and f"{state} exists and is not a directory" in out.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_check_config_to_a_full_or_closed_stdout_exits_74_or_141_without_a_traceback(
    tmp_path: Path,
) -> None:
    """Every verb but serve writes stdout as timelinectl does (timelined.stdout)."""
    import os

    config = tmp_path / "config.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path / "var"}"\n')
    argv = [sys.executable, "-m", "timelined", "check-config", "--config", str(config)]
    with open("/dev/full", "w") as full:
        done = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 74, done.stderr
    assert done.stderr == "timelined: cannot write stdout: No space left on device\n"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        done = subprocess.run(
            [*argv, "--json"], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize(
    "argv",
    [
        ["timelined", "--help"],
        ["timelined", "--version"],
        ["timelined", "verify", "--help"],
        ["timelinectl", "--help"],
        ["timelinectl", "--json", "--help"],
        ["timelinectl", "append", "--help"],
    ],
    ids=" ".join,
)
def test_help_to_a_full_or_closed_stdout_is_a_failed_write_not_success(argv: list[str]) -> None:
    """argparse drops a failed write of --help; both tools report it as any other output."""
    import os

    tool = Path(sys.executable).with_name(argv[0])
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [str(tool), *argv[1:]], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60
        )
    assert done.returncode == 74, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    if "--json" in argv:
        assert json.loads(line)["error"] == f"{argv[0]}.CannotWrite"
    else:
        assert line == f"{argv[0]}: cannot write stdout: No space left on device"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [str(tool), *argv[1:]], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")
    done = subprocess.run([str(tool), *argv[1:]], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout and not done.stderr, done.stderr


@pytest.mark.parametrize("verb", ["serve", "check-config"])
def test_help_says_where_the_config_is_looked_for(verb: str) -> None:
    """The lookup order of timelined/config.py, not "$TIMELINED_CONFIG, ..." (or nothing)."""
    out = _timelined(verb, "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse wraps the help
    for where in ("$TIMELINED_CONFIG", "$CONFIGURATION_DIRECTORY/config.toml", "./config.toml"):
        assert where in text, (where, out.stdout)
