"""`timelinectl export-log DIR` against a real daemon: the daemon's own log files, byte for byte,
verified by tools/verify_log.py; refusals named; nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import DaemonProcess, serving
from timelined.auditlog.reader import read_lines
from timelined.client import Client
from timelined.ctl import exportlog
from timelined.ctl.main import main

REPO = Path(__file__).resolve().parents[2]
SEGMENT_BYTES = 4096  # the smallest the config allows: several segments from a hundred events
# Few rounds: the verifier's watch of the log takes quick rotations of small segments for
# foreign files (about a second each, delaying the stop) — a known limit of that watch.
ROUNDS = 15
EVENTS = 1 + ROUNDS * 7


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with serving(log={"segment_bytes": SEGMENT_BYTES}) as proc:
        with Client(proc.socket_path) as client:
            root = client.create_conversation("export me").root_context_id
            for i in range(ROUNDS):
                # Batches of 6 blocks of ~250 bytes: a batch crosses the segment limit, so the
                # daemon's cut falls at batch starts, not where a line-by-line cut would.
                blocks = [{"role": "user", "content": f"{i}.{k} " + "x" * 250} for k in range(6)]
                client.append_blocks(root, blocks)
                client.append_block(root, "assistant", f"answer {i}")
        yield proc


def _ctl(
    daemon: DaemonProcess, *argv: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--socket", str(daemon.socket_path), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _records(log_dir: Path) -> dict[str, bytes]:
    """A running daemon's segments as a clean stop leaves them: the last one without the space
    its writer reserved ahead (NULs at its end, docs/log-format.md "Files")."""
    found = {p.name: p.read_bytes() for p in sorted(log_dir.iterdir())}
    if found:
        last = max(found)
        found[last] = found[last].rstrip(b"\0")
    return found


def _same_tree(exported: Path, log_dir: Path) -> None:
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == _records(log_dir)


def test_export_is_the_daemons_log_byte_for_byte(
    daemon: DaemonProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "copy"
    code, out, err = _ctl(daemon, "--json", "export-log", str(target), capsys=capsys)
    assert code == 0, err
    summary = json.loads(out)
    log_dir = daemon.state_dir / "log"
    assert len(summary["segments"]) > 4  # the cut was exercised
    _same_tree(target, log_dir)
    assert summary["events"] == EVENTS
    assert summary["bytes"] == sum(map(len, _records(log_dir).values()))
    assert json.loads(err.splitlines()[-1])["progress"]["events"] == summary["events"]
    # A line-by-line cut would differ from the daemon's: the segments came from the daemon.
    cut = exportlog._Segments(tmp_path, SEGMENT_BYTES)
    for seq, line in read_lines(log_dir, 0, summary["events"]):
        cut.add(seq, line, None)
    cut.abort()
    assert cut.names != summary["segments"]

    verified = subprocess.run(
        [sys.executable, str(REPO / "tools" / "verify_log.py"), str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith(f"OK {summary['events']} events")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_an_empty_directory_is_filled_a_non_empty_one_refused(
    daemon: DaemonProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = _ctl(daemon, "export-log", str(empty), capsys=capsys)
    assert code == 0, err
    assert f"exported {EVENTS} events" in out and f"export-log: {EVENTS}/{EVENTS} events" in err
    _same_tree(empty, daemon.state_dir / "log")

    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    code, out, err = _ctl(daemon, "--json", "export-log", str(full), capsys=capsys)
    assert code == 73 and out == ""
    error = json.loads(err)
    assert error["error"] == "timelinectl.DirectoryNotEmpty"
    assert error["parameters"]["dir"] == str(full)
    assert [p.name for p in full.iterdir()] == ["notes.txt"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = _ctl(daemon, "export-log", str(a_file), capsys=capsys)
    assert code == 73 and "is not a directory" in err


def test_a_broken_export_leaves_nothing_that_looks_complete(
    daemon: DaemonProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon's head hash does not match what was read: refused, nothing written."""
    real = exportlog._export

    def wrong_head(ctl: object, target: Path, head: int, head_hash: str, size: int) -> object:
        return real(ctl, target, head, "0" * 64, size)  # type: ignore[arg-type]

    monkeypatch.setattr(exportlog, "_export", wrong_head)
    target = tmp_path / "copy"
    code, _, err = _ctl(daemon, "--json", "export-log", str(target), capsys=capsys)
    assert code == 65
    assert json.loads(err.splitlines()[-1])["error"] == "timelinectl.BadLog"
    assert list(tmp_path.iterdir()) == []  # neither the target nor the staging directory


def test_the_line_by_line_cut_is_the_writers_for_single_event_batches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A table has no segments: export-log cuts as the file writer does when every batch is one
    event, which is what a daemon given one append at a time writes."""
    with serving(log={"segment_bytes": SEGMENT_BYTES}) as proc:
        with Client(proc.socket_path) as client:
            root = client.create_conversation("one by one").root_context_id
            for i in range(60):
                client.append_block(root, "user", f"{i} " + "y" * 200)
        log_dir = proc.state_dir / "log"
        cut = exportlog._Segments(tmp_path / "cut", SEGMENT_BYTES)
        cut.directory.mkdir()
        for seq, line in read_lines(log_dir, 0, 61):
            cut.add(seq, line, None)
        cut.close()
        assert len(cut.names) > 2
        _same_tree(cut.directory, log_dir)


def test_status_and_read_log_describe_the_files(
    daemon: DaemonProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    log_dir = daemon.state_dir / "log"
    files = sorted(log_dir.iterdir())
    code, out, _ = _ctl(daemon, "--json", "status", capsys=capsys)
    assert code == 0
    assert json.loads(out)["status"]["log"] == {
        "backend": "file",
        "segment_bytes": SEGMENT_BYTES,
        "stored_bytes": sum(p.stat().st_size for p in files),
        "segments": len(files),
    }
    code, out, _ = _ctl(daemon, "status", capsys=capsys)
    assert f"file, {len(files)} segments" in out
    starts = [int(p.name[:20]) for p in files]
    with Client(daemon.socket_path) as client:
        page = client.read_log(after_seq=starts[1] - 1, limit=starts[3] - starts[1] + 1)
        assert page.segments == starts[1:4]
        page = client.read_log(after_seq=starts[1], limit=starts[2] - starts[1] - 1)
        assert page.segments == [] and page.next is not None
