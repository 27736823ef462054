"""An online backup taken under writers restores as `recovered`, with all acknowledged before."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import DaemonProcess, short_tempdir
from tests.helpers import dump_state, replay_dump
from tests.recovery.test_real_daemon import (
    WRITERS,
    Writers,
    create_root,
    newest_boot,
    stored_ids,
)


@pytest.fixture
def base() -> Iterator[Path]:
    with short_tempdir("tlb") as path:
        yield path


def test_backup_while_writing_restores_everything_acknowledged_before_it(
    base: Path, tmp_path: Path
) -> None:
    daemon = DaemonProcess(base).start()
    root = create_root(daemon)
    with Writers(daemon.socket_path, root, 0) as writers:
        time.sleep(0.3)
        writers.wait_acked(WRITERS)  # something acknowledged before the backup, when loaded too
        with writers.lock:
            before = list(writers.acked)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "timelined",
                "backup",
                "--state-dir",
                str(daemon.state_dir),
                "--to",
                str(base / "copy"),
                "--json",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        time.sleep(0.1)
    assert out.returncode == 0, out.stderr
    assert daemon.stop() == 0
    restored = DaemonProcess(base / "r")
    restored.sections["daemon"]["state_dir"] = str(base / "copy")
    restored.state_dir = base / "copy"
    (base / "r").mkdir()
    restored.start()
    report = newest_boot(restored)
    assert report.verdict == "recovered", report
    assert set(before) <= stored_ids(restored, before)
    assert restored.stop() == 0
    assert dump_state(base / "copy" / "state.db") == replay_dump(
        base / "copy" / "log", tmp_path / "r.db"
    )


def test_backup_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    (tmp_path / "state" / "log").mkdir(parents=True)
    (tmp_path / "state" / "state.db").write_bytes(b"")
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "x").write_text("x")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "timelined",
            "backup",
            "--state-dir",
            str(tmp_path / "state"),
            "--to",
            str(tmp_path / "dest"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 73 and "not empty" in out.stderr


def _backup(state: Path, to: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "timelined",
            "backup",
            *("--state-dir", str(state), "--to", str(to)),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.parametrize(
    "kind", ["a regular file", "under a regular file", "a symlink", "not a state dir"]
)
def test_backup_names_what_is_wrong_and_leaves_nothing(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "state"
    (state / "log").mkdir(parents=True)
    (state / "state.db").write_bytes(b"")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    if kind == "a regular file":
        to, code, words = blocker, 73, "is not a directory"
    elif kind == "under a regular file":
        to, code, words = blocker / "sub", 73, "cannot create"
    elif kind == "a symlink":  # to an empty directory: it looked like a good destination
        (tmp_path / "empty").mkdir()
        to, code, words = tmp_path / "link", 73, "is a symbolic link"
        to.symlink_to(tmp_path / "empty")
    else:
        state, to, code, words = tmp_path, tmp_path / "copy", 66, "not a timelined state directory"
    out = _backup(state, to)
    assert out.returncode == code, out.stderr
    assert words in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not to.with_name(to.name + ".partial").exists()
    out = _backup(state, to, "--json")
    error = json.loads(out.stderr)
    assert out.returncode == code and error["error"] == "io.timelined.Admin.BackupFailed", (
        out.stderr
    )
    assert words in error["parameters"]["message"]


def test_a_failed_copy_is_removed(tmp_path: Path) -> None:
    # A state.db that is not a database: the copy fails after `.partial` was made.
    state = tmp_path / "state"
    (state / "log").mkdir(parents=True)
    (state / "state.db").write_bytes(b"not a database, " * 512)
    out = _backup(state, tmp_path / "copy")
    assert out.returncode == 74, out.stderr
    assert "copying failed" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert f"copying failed at {state / 'state.db'}: file is not a database" in out.stderr
    assert not (tmp_path / "copy").exists() and not (tmp_path / "copy.partial").exists()


@pytest.mark.parametrize("what", ["a directory", "a symlink"])
def test_a_partial_left_over_is_refused_not_deleted(tmp_path: Path, what: str) -> None:
    state = tmp_path / "state"
    (state / "log").mkdir(parents=True)
    (state / "state.db").write_bytes(b"")
    partial = tmp_path / "copy.partial"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep me")
    if what == "a directory":
        partial.mkdir()
        (partial / "precious").write_text("keep me")
    else:
        partial.symlink_to(elsewhere)
    out = _backup(state, tmp_path / "copy")
    assert out.returncode == 73 and "copy.partial exists" in out.stderr, out.stderr
    assert (partial / "precious").read_text() == "keep me"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["precious"]


def test_a_damaged_source_log_is_named_as_the_cause(tmp_path: Path) -> None:
    from tests.recovery.test_boot import boot_once, make_config, write_blocks
    from timelined.auditlog.segments import list_segments

    config = make_config(tmp_path)
    write_blocks(config, boot_once(config).head, 3)
    first = Path(list_segments(config.log_dir)[0].path)
    first.write_bytes(first.read_bytes().replace(b'"m1"', b'"M1"'))  # an edited line, seq 3
    out = _backup(config.state_dir, tmp_path / "copy")
    assert out.returncode == 74, out.stderr
    assert f"the source's log is damaged (hash mismatch at seq 3 in {first.name})" in out.stderr
    assert not (tmp_path / "copy").exists() and not (tmp_path / "copy.partial").exists()


@pytest.mark.parametrize("source_mode", [0o700, 0o750], ids=["private", "state_group"])
def test_the_copy_is_as_private_as_the_source_whatever_the_umask(
    tmp_path: Path, source_mode: int
) -> None:
    """Directories take the state directory's bits, files the same without execute (0700/0600,
    or 0750/0640 as with `state_group`), under a umask that would make them world-readable."""
    import os
    import stat

    from tests.recovery.test_boot import boot_once, make_config, write_blocks

    config = make_config(tmp_path)
    write_blocks(config, boot_once(config).head, 3)
    config.state_dir.chmod(source_mode)
    to = tmp_path / "backups" / "copy"
    out = subprocess.run(
        [
            sys.executable,
            *("-m", "timelined", "backup"),
            *("--state-dir", str(config.state_dir), "--to", str(to)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert out.returncode == 0, out.stderr
    modes = {
        str(p.relative_to(to)): stat.S_IMODE(p.stat().st_mode)
        for p in [to, *to.rglob("*")]
        if not p.is_symlink()
    }
    assert {"log", "state.db"} <= set(modes) and any(m.startswith("log/") for m in modes)
    assert "reports" in modes, modes
    file_mode = source_mode & 0o666
    wrong = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (source_mode if (to / name).is_dir() else file_mode)
    }
    assert not wrong, wrong


def _group_state_dir(tmp_path: Path) -> tuple[Path, int]:
    """A stopped daemon's state directory with `[daemon] state_group` of a group root is not
    in: setgid 0750 directories and 0640 files of that group, as the boot leaves them."""
    import grp

    import msgspec

    from tests.recovery.test_boot import boot_once, make_config, write_blocks

    gid = next((g.gr_gid for g in grp.getgrall() if g.gr_gid not in (0, *os.getgroups())), 4242)
    config = make_config(tmp_path)
    daemon = msgspec.structs.replace(config.daemon, state_group=str(gid))
    config = msgspec.structs.replace(config, daemon=daemon)
    umask = os.umask(0o077)
    try:
        write_blocks(config, boot_once(config).head, 3)
    finally:
        os.umask(umask)  # the boot sets the daemon's; the tests that follow keep theirs
    return config.state_dir, gid


def _modes_and_groups(root: Path) -> dict[str, tuple[str, int]]:
    import stat

    return {
        str(p.relative_to(root)): (oct(stat.S_IMODE(p.lstat().st_mode)), p.lstat().st_gid)
        for p in [root, *root.rglob("*")]
        if not p.is_symlink()
    }


@pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0,
    reason="needs root, to make a state directory of a group the test user is not in",
)
def test_the_copy_keeps_the_sources_group_and_setgid_directories(tmp_path: Path) -> None:
    state, gid = _group_state_dir(tmp_path)
    source = _modes_and_groups(state)
    assert source["."] == (oct(0o2750), gid) and source["log"] == (oct(0o2750), gid), source
    to = tmp_path / "copy"
    out = _backup(state, to)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 1 and "note" not in out.stdout, out.stdout
    copy = _modes_and_groups(to)
    assert {"log", "reports", "state.db"} <= set(copy) and any(p.startswith("log/") for p in copy)
    wrong = {
        path: have
        for path, have in copy.items()
        if have != (oct(0o2750 if (to / path).is_dir() else 0o640), gid)
    }
    assert not wrong, wrong
    out = _backup(state, tmp_path / "copy2", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["notes"] == [], out.stderr


@pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root (a state directory of another group) and setpriv (root without chown)",
)
def test_a_user_who_may_not_give_the_group_gets_a_private_copy_and_one_note(
    tmp_path: Path,
) -> None:
    """Root without CAP_CHOWN and outside the group, as a user who is not in the group: the
    chown is refused by the kernel; the backup is made, private to its owner, and says so."""
    state, gid = _group_state_dir(tmp_path)
    no_chown = ["setpriv", "--inh-caps=-chown", "--bounding-set=-chown", "--clear-groups"]
    for n, extra in enumerate(([], ["--json"])):
        to = tmp_path / f"copy{n}"
        backup = [sys.executable, "-m", "timelined", "backup", "--state-dir", str(state)]
        out = subprocess.run(
            [*no_chown, *backup, "--to", str(to), *extra],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        if extra:
            notes = json.loads(out.stdout)["notes"]
        else:
            notes = [line for line in out.stdout.splitlines() if line.startswith("note: ")]
            assert len(out.stdout.splitlines()) == 2, out.stdout
        assert len(notes) == 1, out.stdout
        assert f"does not have the source's group {_group(gid)}" in notes[0]
        assert "Operation not permitted" in notes[0] and "private to its owner" in notes[0]
        wrong = {
            path: have
            for path, have in _modes_and_groups(to).items()
            if have != (oct(0o2700 if (to / path).is_dir() else 0o600), 0)
        }
        assert not wrong, wrong


def _group(gid: int) -> str:
    import grp

    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"
