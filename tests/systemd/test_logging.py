"""Journal-format logging when JOURNAL_STREAM names the child's own stderr; terminal format else."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from timelined.logs import parse_level, setup_logging, stream_is_journal, syslog_priority

from .support import PYTHON, child_env

CHILD = r"""
import logging, sys
from timelined.logs import setup_logging
journal = setup_logging(sys.argv[1])
log = logging.getLogger("timelined.test")
log.debug("d")
log.info("i")
log.warning("w")
log.error("e")
log.critical("c")
log.info("two\nlines")
logging.getLogger("aiosqlite").debug("chatty")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("boom")
print("JOURNAL" if journal else "TERMINAL")
"""

_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


def _run(tmp_path: Path, level: str, journal_stream: str | None) -> tuple[str, list[str]]:
    """Run the child with stderr on a file; JOURNAL_STREAM="match" names that file."""
    err_path = tmp_path / "stderr.txt"
    with err_path.open("w") as err:
        env = child_env()
        if journal_stream == "match":
            st = os.fstat(err.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream
        proc = subprocess.run(
            [PYTHON, "-c", CHILD, level],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=30,
            check=True,
        )
    return proc.stdout.strip(), err_path.read_text().splitlines()


def test_journal_format_when_journal_stream_matches_stderr(tmp_path: Path) -> None:
    mode, lines = _run(tmp_path, "debug", "match")
    assert mode == "JOURNAL"
    assert lines[:6] == [
        "<7>timelined.test: d",
        "<6>timelined.test: i",
        "<4>timelined.test: w",
        "<3>timelined.test: e",
        "<2>timelined.test: c",
        "<6>timelined.test: two\\nlines",  # one event, one line
    ]
    assert "chatty" not in "\n".join(lines)  # aiosqlite's per-statement debug is kept quiet
    assert lines[6] == "<3>timelined.test: boom"
    traceback = lines[7:]
    assert traceback and all(line.startswith("<3>") for line in traceback)
    assert any("ZeroDivisionError" in line for line in traceback)
    assert not any(_STAMP.match(line) for line in lines)


def test_terminal_format_without_journal_stream(tmp_path: Path) -> None:
    mode, lines = _run(tmp_path, "info", None)
    assert mode == "TERMINAL"
    events = [line for line in lines if not line.startswith(" ")]
    assert len(events) == 6  # debug is below the level; i w e c, two-lines, boom
    assert all(_STAMP.match(line) for line in events)
    assert re.search(r"Z INFO +timelined\.test: i$", events[0])
    assert re.search(r"Z WARNING +timelined\.test: w$", events[1])
    assert events[4].endswith("timelined.test: two\\nlines")
    assert not any(line.startswith("<") for line in lines)


def test_terminal_format_when_journal_stream_is_elsewhere(tmp_path: Path) -> None:
    # stderr was redirected away from the journal after systemd set the variable
    mode, lines = _run(tmp_path, "warning", "1:2")
    assert mode == "TERMINAL"
    assert _STAMP.match(lines[0]) and "WARNING" in lines[0]


def test_stream_is_journal_parsing(tmp_path: Path) -> None:
    with (tmp_path / "f").open("w") as f:
        st = os.fstat(f.fileno())
        assert stream_is_journal(f.fileno(), {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stream_is_journal(f.fileno(), {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not stream_is_journal(f.fileno(), {"JOURNAL_STREAM": "garbage"})
        assert not stream_is_journal(f.fileno(), {})


def test_levels() -> None:
    assert parse_level("INFO") == logging.INFO
    assert parse_level(" warning ") == logging.WARNING
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        parse_level("loud")
    assert [syslog_priority(x) for x in (5, 10, 20, 25, 30, 40, 50, 60)] == [7, 7, 6, 6, 4, 3, 2, 2]


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root")
def test_setup_twice_replaces_its_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", first)
    setup_logging("debug", second)  # a reload that changes the level
    logging.getLogger("timelined.x").debug("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1
