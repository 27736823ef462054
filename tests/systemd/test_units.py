"""The shipped unit files, checked by the real systemd-analyze / systemd-sysusers / -tmpfiles.

`systemd-analyze verify` checks that ExecStart= is executable, and /opt/timelined/bin/timelined
exists only on an installed host, so the verify tests run on a copy whose ExecStart= points at
this Python. Everything else is the shipped text. Because verify only *warns* about unknown keys
and bad values (exit 0), a unit passes only if verify also says nothing about it.

`--threshold=` of `systemd-analyze security` is on the internal 0-100 scale (systemd 252 rejects
"2.0"): an exposure of 2.0 is threshold 20.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .support import PYTHON, UNITS, require_tool

SERVICE = UNITS / "timelined.service"
SOCKET = UNITS / "timelined.socket"
SHIPPED_EXEC = "ExecStart=/opt/timelined/bin/timelined serve"
THRESHOLD = 20  # exposure 2.0 on systemd-analyze's 0-100 scale
_SCORE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


def _copy_units(
    dest: Path, service_text: str | None = None, socket_text: str | None = None
) -> Path:
    text = SERVICE.read_text() if service_text is None else service_text
    if SHIPPED_EXEC in text:
        text = text.replace(SHIPPED_EXEC, f"ExecStart={PYTHON} -m timelined serve")
    (dest / "timelined.service").write_text(text)
    (dest / "timelined.socket").write_text(
        SOCKET.read_text() if socket_text is None else socket_text
    )
    return dest


def _verify(directory: Path) -> tuple[int, list[str]]:
    """Exit code and every diagnostic line that concerns our units."""
    tool = require_tool("systemd-analyze")
    proc = subprocess.run(
        [tool, "verify", "--man=no", "--generators=no", "timelined.service", "timelined.socket"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [line for line in lines if "timelined" in line]


def _security(path: Path) -> tuple[int, float, str]:
    tool = require_tool("systemd-analyze")
    proc = subprocess.run(
        [tool, "security", "--offline=yes", f"--threshold={THRESHOLD}", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = _SCORE.search(proc.stdout)
    assert m, f"no exposure level in:\n{proc.stdout}\n{proc.stderr}"
    return proc.returncode, float(m.group(1)), proc.stdout + proc.stderr


def test_shipped_exec_start_is_the_documented_one() -> None:
    text = SERVICE.read_text()
    assert SHIPPED_EXEC in text
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text


def test_verify_passes_on_both_units(tmp_path: Path) -> None:
    rc, problems = _verify(_copy_units(tmp_path))
    assert rc == 0, problems
    assert problems == []


@pytest.mark.skipif(Path("/opt/timelined/bin/timelined").exists(), reason="installed host")
def test_verify_checks_exec_start_of_the_shipped_unit(tmp_path: Path) -> None:
    # Why the other tests rewrite ExecStart=: verify does look at the executable.
    (tmp_path / "timelined.service").write_text(SERVICE.read_text())
    (tmp_path / "timelined.socket").write_text(SOCKET.read_text())
    rc, problems = _verify(tmp_path)
    assert rc != 0
    assert any("/opt/timelined/bin/timelined" in line for line in problems), problems


@pytest.mark.parametrize(
    ("unit", "old", "new"),
    [
        ("service", "Type=notify\n", "Type=notified\n"),
        ("service", "ProtectSystem=strict\n", "ProtectSystem=strictest\n"),
        ("service", "WatchdogSec=30s\n", "WatchdogSecs=30s\n"),
        ("service", "UMask=0027\n", "UMask=0999\n"),
        ("service", "[Service]\n", "[Service]\nRestrictAddressFamilies=AF_NOPE\n"),
        ("socket", "SocketMode=0660\n", "SocketMode=rw-rw----\n"),
        ("socket", "ListenStream=/run/", "ListenStream=run/"),
        ("socket", "Service=timelined.service\n", "Service=timelined-missing.service\n"),
    ],
)
def test_verify_catches_a_broken_unit(tmp_path: Path, unit: str, old: str, new: str) -> None:
    service, socket_ = SERVICE.read_text(), SOCKET.read_text()
    if unit == "service":
        assert old in service
        service = service.replace(old, new, 1)
    else:
        assert old in socket_
        socket_ = socket_.replace(old, new, 1)
    rc, problems = _verify(_copy_units(tmp_path, service, socket_))
    assert rc != 0 or problems, f"verify accepted {new!r}"


def test_security_exposure_below_2(tmp_path: Path) -> None:
    rc, score, out = _security(SERVICE)
    assert score < 2.0, out
    assert rc == 0, out


def test_security_fails_without_the_hardening(tmp_path: Path) -> None:
    # Drop the whole sandbox section (up to [Install]) and the user switch.
    kept, skipping = [], False
    for line in SERVICE.read_text().splitlines(keepends=True):
        if line.startswith("# --- sandbox"):
            skipping = True
        elif line.startswith("[Install]"):
            skipping = False
        if not skipping and not line.startswith(("User=", "Group=", "UMask=")):
            kept.append(line)
    bare = tmp_path / "timelined.service"
    bare.write_text("".join(kept))
    rc, score, out = _security(bare)
    assert score > 2.0, out
    assert rc != 0, out


REQUIRED = [
    "Type=notify",
    "NotifyAccess=main",
    "WatchdogSec=30s",
    "Restart=on-failure",
    "RestartPreventExitStatus=78",
    "StateDirectory=timelined",
    "StateDirectoryMode=0700",
    "RuntimeDirectory=timelined",
    "RuntimeDirectoryMode=0750",
    "RuntimeDirectoryPreserve=yes",
    "ConfigurationDirectory=timelined",
    "User=timelined",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "PrivateNetwork=yes",
    "NoNewPrivileges=yes",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "RestrictAddressFamilies=AF_UNIX",
    "SystemCallFilter=@system-service",
    "SystemCallArchitectures=native",
    "MemoryDenyWriteExecute=yes",
    "LockPersonality=yes",
    "RestrictRealtime=yes",
    "RestrictNamespaces=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "ProcSubset=pid",
    "UMask=0027",
    "IPAddressDeny=any",
    "DevicePolicy=closed",
    "RemoveIPC=yes",
    "RestrictSUIDSGID=yes",
    "KeyringMode=private",
]


def test_service_has_the_required_directives() -> None:
    lines = {line.strip() for line in SERVICE.read_text().splitlines()}
    missing = [d for d in REQUIRED if d not in lines]
    assert missing == []


def test_socket_unit_contract() -> None:
    lines = {line.strip() for line in SOCKET.read_text().splitlines()}
    for directive in (
        "ListenStream=/run/timelined/timelined.sock",
        "SocketMode=0660",
        "SocketGroup=timelined",
        "FileDescriptorName=varlink",
        "Service=timelined.service",
    ):
        assert directive in lines


def test_sysusers_and_tmpfiles_apply_to_a_scratch_root(tmp_path: Path) -> None:
    sysusers = require_tool("systemd-sysusers")
    tmpfiles = require_tool("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        [sysusers, f"--root={tmp_path}", str(UNITS / "timelined.sysusers")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    passwd = (tmp_path / "etc/passwd").read_text()
    group = (tmp_path / "etc/group").read_text()
    user = next(line for line in passwd.splitlines() if line.startswith("timelined:"))
    uid, gid = int(user.split(":")[2]), int(user.split(":")[3])
    assert uid < 1000, "a system user"
    assert user.endswith(":/usr/sbin/nologin")
    assert f"timelined:x:{gid}:" in group
    subprocess.run(
        [tmpfiles, f"--root={tmp_path}", "--create", str(UNITS / "timelined.tmpfiles")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    st = (tmp_path / "run/timelined").stat()
    assert (st.st_mode & 0o7777, st.st_uid) == (0o750, uid)
