"""The `timelined` command line besides `serve`: check-config, and its sysexits usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


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


def test_a_bad_command_line_exits_64() -> None:
    out = _timelined("backup", "--state-dir")
    assert out.returncode == 64 and "expected one argument" in out.stderr
    out = _timelined("no-such-verb")
    assert out.returncode == 64 and "invalid choice" in out.stderr
