"""The durability protocol at the system-call level, as ALICE checks it: under `strace`.

The simulated disk sees what goes through FileOps; this test sees everything else the daemon's
code does to STATE_DIR (the state directory itself, reports, the lock, the quarantine, the
rebuilt state) by tracing the real process. Two rules, for every path under the state directory
except SQLite's own files (derived, rebuilt from the log) and the lock (its content is a hint):

- every entry created, renamed or removed (mkdir, open with O_CREAT, rename, unlink) is followed
  by an fsync of its directory: otherwise a power cut can take the entry back;
- every byte written to a file (write, pwrite, ftruncate) is followed by an fsync of that file.

SQLite's own directory syncs (it fdatasyncs STATE_DIR when it creates a WAL) do not count for
the daemon's entries: they happen to follow most boots, but not a failed one, and the daemon
must not lean on another library's incidental behaviour.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.harness import fast_dir

STRACE = shutil.which("strace")
REPO = Path(__file__).resolve().parents[2]

_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<rest>.*)$")
_CALL = re.compile(r"^(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)(?:<(?P<retpath>[^>]*)>)?")
_FD_PATH = re.compile(r"^-?\d+<(?P<path>[^>]*)>")
_STR = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Event:
    index: int
    kind: str  # entry, data, sync
    path: str
    call: str


def parse(trace: str, cwd: str) -> list[Event]:
    """Completed calls in completion order (unfinished/resumed lines joined per pid)."""
    pending: dict[str, str] = {}
    events: list[Event] = []
    for raw in trace.splitlines():
        m = _LINE.match(raw)
        if not m:
            continue
        pid, rest = m["pid"], m["rest"]
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")].rstrip()
            continue
        resumed = re.match(r"^<\.\.\. \w+ resumed>(.*)$", rest)
        if resumed:
            rest = pending.pop(pid, "") + resumed[1]
        c = _CALL.match(rest)
        if not c or int(c["ret"]) < 0:
            continue
        name, args = c["name"], c["args"]
        strings = [os.path.normpath(os.path.join(cwd, s)) for s in _STR.findall(args)]
        fd = _FD_PATH.match(args)
        n = len(events)
        if name == "fsync" and fd:
            events.append(Event(n, "sync", fd["path"], rest))
        elif name == "fdatasync" and fd:
            events.append(Event(n, "dsync", fd["path"], rest))
        elif name in ("write", "pwrite64", "writev", "pwritev", "ftruncate") and fd:
            events.append(Event(n, "data", fd["path"], rest))
        elif name in ("mkdir", "mkdirat", "unlink", "unlinkat", "rmdir") and strings:
            events.append(Event(n, "entry", strings[-1], rest))
        elif name in ("rename", "renameat", "renameat2") and len(strings) >= 2:
            events.append(Event(n, "entry", strings[0], rest))
            events.append(Event(n + 1, "entry", strings[1], rest))
        elif name in ("open", "openat") and "O_CREAT" in args and c["retpath"]:
            events.append(Event(n, "entry", c["retpath"], rest))
            if "O_TRUNC" in args:
                events.append(Event(n + 1, "data", c["retpath"], rest))
    return events


def _exempt(path: str, root: str) -> bool:
    rel = os.path.relpath(path, root)
    name = os.path.basename(path)
    return (
        name.startswith("state.db")  # SQLite's files: derived, rebuilt from the log
        or (rel.startswith("quarantine/") and name.startswith("state-"))
        or rel == "lock"
    )


def violations(events: list[Event], base: str, root: str) -> list[str]:
    """Entries without a later fsync of their directory; data without a later fsync."""
    found: list[str] = []
    synced_at: dict[str, list[int]] = {}
    dir_synced_at: dict[str, list[int]] = {}
    for e in events:
        if e.kind in ("sync", "dsync"):
            synced_at.setdefault(e.path, []).append(e.index)
        if e.kind == "sync":
            dir_synced_at.setdefault(e.path, []).append(e.index)

    def synced_after(path: str, index: int, table: dict[str, list[int]]) -> bool:
        return any(i > index for i in table.get(path, []))

    for e in events:
        if not e.path.startswith(base + os.sep) or _exempt(e.path, root):
            continue
        if e.kind == "entry":
            parent = os.path.dirname(e.path)
            if not synced_after(parent, e.index, dir_synced_at):
                found.append(f"no fsync of {parent} after: {e.call}")
        elif e.kind == "data" and not synced_after(e.path, e.index, synced_at):
            found.append(f"no fsync of {e.path} after: {e.call}")
    return sorted(set(found))


def traced(phase: str, state_dir: Path, out: Path) -> str:
    assert STRACE is not None
    cmd = [
        STRACE,
        "-f",
        "-y",
        "-qq",
        "-s",
        "256",
        "-e",
        "trace=openat,open,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,"
        "write,pwrite64,writev,pwritev,ftruncate,fsync,fdatasync",
        "-o",
        str(out),
        sys.executable,
        "-m",
        "tests.faults.traced_workload",
        phase,
        str(state_dir),
    ]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    if run.returncode != 0 and "ptrace" in run.stderr:
        pytest.skip(f"strace cannot trace here: {run.stderr.strip()[:200]}")
    assert run.returncode == 0, run.stderr[-3000:]
    return out.read_text()


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_every_entry_and_every_byte_the_daemon_writes_is_made_durable() -> None:
    with fast_dir("tl-strace-") as work:
        base = work / "base"
        base.mkdir()
        state_dir = base / "var" / "state"  # neither exists: the boot makes both
        problems: dict[str, list[str]] = {}
        for phase in ("fresh", "restart", "recover", "final"):
            if phase == "recover":
                seg = sorted((state_dir / "log").glob("*.jsonl"))[-1]
                with seg.open("ab") as fh:
                    fh.write(b'{"seq":99,"ts":"torn by a crash')
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{state_dir}/state.db{suffix}").unlink(missing_ok=True)
                shutil.rmtree(state_dir / "reports")  # an operator cleaned up old reports
            trace = traced(phase, state_dir, work / f"{phase}.trace")
            events = parse(trace, str(REPO))
            assert any(e.kind == "sync" for e in events), "the trace has the fsyncs"
            problems[phase] = violations(events, str(base), str(state_dir))
        assert list((state_dir / "quarantine").glob("*.torn")), "the recover phase cut a tail"
        assert not any(problems.values()), "\n".join(
            f"{phase}: {p}" for phase, ps in problems.items() for p in ps
        )
