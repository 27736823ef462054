"""Logging: one line per event on stderr, in the journal's format when stderr is the journal.

When systemd connects stderr to journald it sets `JOURNAL_STREAM=<device>:<inode>` of that
stream. If fd 2 is still that stream, each line starts with a `<N>` syslog priority (sd-daemon(3))
and carries no timestamp (the journal adds its own); otherwise a line has a UTC timestamp and
the level name, for a terminal or a file.

A message's own newlines are escaped, so one event stays one line and text that came from a
client cannot forge log lines. A traceback follows its line; in the journal every traceback
line repeats the priority prefix, so that `journalctl -p err` shows it whole.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_HANDLER_NAME = "timelined.logs"

# syslog(3) priorities for the `<N>` prefix; NOTICE (5) has no Python level.
_PRIORITY: dict[int, int] = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

# Libraries that are chatty at levels we use for our own events: aiosqlite logs every
# statement at debug, watchfiles logs every batch of changes at info.
_QUIET: dict[str, int] = {"aiosqlite": logging.INFO, "watchfiles": logging.WARNING}


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a Python level (custom levels round down to the next known)."""
    for threshold in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= threshold:
            return _PRIORITY[threshold]
    return _PRIORITY[logging.DEBUG]


def stream_is_journal(fd: int = 2, environ: Mapping[str, str] | None = None) -> bool:
    """True when JOURNAL_STREAM names the (device, inode) that `fd` is connected to."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev_text, sep, ino_text = value.partition(":")
    if not sep:
        return False
    try:
        dev, ino = int(dev_text), int(ino_text)
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class JournalFormatter(logging.Formatter):
    """`<N>logger: message`, no timestamp: journald parses the prefix and stamps the time."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        line = f"{prefix}{record.name}: {_one_line(record.getMessage())}"
        extra = self._extra(record)
        if not extra:
            return line
        return "\n".join([line, *(f"{prefix}  {x}" for x in extra.splitlines())])

    def _extra(self, record: logging.LogRecord) -> str:
        parts = []
        if record.exc_info:
            parts.append(self.formatException(record.exc_info))
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(parts)


class TerminalFormatter(JournalFormatter):
    """`2024-05-01T12:00:00.123Z INFO    logger: message`, for a terminal or a file."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        millis = int(record.msecs)
        line = (
            f"{stamp}.{millis:03d}Z {record.levelname:<8} {record.name}: "
            f"{_one_line(record.getMessage())}"
        )
        extra = self._extra(record)
        if not extra:
            return line
        return "\n".join([line, *(f"    {x}" for x in extra.splitlines())])


def parse_level(level: str) -> int:
    """A level name (debug, info, warning, error, critical; any case) → logging level."""
    try:
        return LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}"
        ) from None


def setup_logging(level: str, stream: TextIO | None = None) -> bool:
    """Route all logging to stderr (or `stream`) at `level`; True when in journal format.

    Safe to call again (a reload that changes the level): it replaces its own handler.
    """
    levelno = parse_level(level)
    out = sys.stderr if stream is None else stream
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    journal = fd >= 0 and stream_is_journal(fd)
    handler = logging.StreamHandler(out)
    handler.setFormatter(JournalFormatter() if journal else TerminalFormatter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    # Replace only our own handler: a second call (reload) must not add a second line per
    # event, and a host that installed its own handlers (pytest's capture) keeps them.
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    for name, minimum in _QUIET.items():
        logging.getLogger(name).setLevel(max(levelno, minimum))
    logging.captureWarnings(True)
    return journal
