"""A command's stdout, as timelinectl and timelined write it: every byte or a named failure
(exit 74, one line), and a reader that went away ends the command quietly (exit 141)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TextIO

from timelined.errors import LocalError

EX_PIPE = 128 + 13  # what a shell reports for a program SIGPIPE ended


class OutputFailed(LocalError):
    """Writing to stdout failed for another reason than a closed pipe (ENOSPC, EIO, ...)."""

    name = "OutputFailed"

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error), errno=error.errno)
        self.error = error


def write(stream: TextIO, text: str) -> None:
    """Every byte of `text` on `stream`, or an error.

    A closed pipe raises BrokenPipeError (the command exits 141); any other failure (a full
    disk: ENOSPC) raises OutputFailed (exit 74). Under `python -u` (or PYTHONUNBUFFERED) stdout's
    binary layer is unbuffered, and its TextIOWrapper drops what a short write leaves over (a
    pipe whose reader went away mid-write), so the bytes go through a loop that takes short
    writes, until the next write reports the closed pipe.
    """
    try:
        raw = getattr(stream, "buffer", None)
        if raw is None:  # not a real file (tests capture it)
            stream.write(text)
            return
        stream.flush()
        data = memoryview(text.encode(stream.encoding, stream.errors or "strict"))
        while data:
            written = raw.write(data)
            if written is None:  # a non-blocking stdout that is full
                raise BlockingIOError(11, "stdout would block")
            data = data[written:]
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputFailed(exc) from exc


def flush(stream: TextIO) -> None:
    """Flush `stream`; errors as for write()."""
    try:
        stream.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputFailed(exc) from exc


def silence(stream: TextIO) -> None:
    """Point `stream`'s descriptor at /dev/null: the interpreter flushes it at exit, and what is
    still buffered would fail again there (a traceback, or "Exception ignored")."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture it)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def run_writing(
    stream: TextIO, run: Callable[[], int], failed: Callable[[OutputFailed], int]
) -> int:
    """`run()`'s exit code, its output on `stream` flushed here (not at exit, where a closed
    pipe or a full disk would be reported as a traceback). A write that failed returns what
    `failed` returns (it says so on stderr: EX_IOERR); a reader that went away returns EX_PIPE
    with nothing said: SIGPIPE's default action would kill the process (a shell may then print
    "Broken pipe"), so the write's EPIPE is taken instead. A SystemExit from `run()` (argparse's
    --help) goes on once its output is flushed, or ends as a failed write would."""
    try:
        try:
            try:
                code = run()
            except SystemExit:
                # argparse's --help and --version end the command here: their text is output
                # too, and a failure to write it must not pass for success at the exit's flush.
                flush(stream)
                raise
            flush(stream)
            return code
        except OutputFailed as exc:
            silence(stream)
            return failed(exc)
    except BrokenPipeError:
        silence(stream)
        return EX_PIPE
