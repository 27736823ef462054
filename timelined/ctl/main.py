"""timelinectl: talk to timelined from a shell.

    timelinectl [--socket PATH] [--json] VERB ...

Human output by default (tables, a tree for `tree`); `--json` prints the Varlink reply as JSON.
Errors go to stderr (as JSON with --json). Exit codes (sysexits):

    0   ok
    1   refused: the daemon answered with a named error (ContextNotFound, InvalidTransition,
        PermissionDenied, ...); also `verify --wait` when the run found a problem
    64  usage: bad command line
    65  bad data: InvalidParameter, InvalidArgument, BadQuery
    69  unavailable: the daemon is not running or cannot be reached
    70  software: an internal error or a reply that breaks the protocol
    78  config: the config file (used to find the socket) was refused
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

import msgspec

from timelined import __version__
from timelined.client import (
    InterfaceNotFound,
    InvalidParameter,
    MethodNotFound,
    MethodNotImplemented,
)
from timelined.ctl import admin, blocks, contexts, conversations, streams
from timelined.ctl.common import Ctl
from timelined.ctl.output import Output
from timelined.errors import (
    BadQuery,
    ConfigError,
    DaemonUnavailable,
    InvalidArgument,
    ProtocolError,
    TimelinedError,
)

EX_OK = 0
EX_REFUSED = 1
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CONFIG = 78

VERB_GROUPS = (admin, conversations, contexts, blocks, streams)


class _Parser(argparse.ArgumentParser):
    """argparse, exiting 64 (EX_USAGE) on a bad command line."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="timelinectl",
        description="Talk to timelined: conversations, contexts, blocks, and administration.",
        epilog="Exit codes: 0 ok, 1 refused, 64 usage, 65 bad data, 69 daemon unavailable, "
        "70 internal error, 78 config.",
    )
    parser.add_argument("--version", action="version", version=f"timelinectl {__version__}")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="the daemon's socket (default: $TIMELINED_SOCKET, else the config's socket_path)",
    )
    parser.add_argument("--json", action="store_true", help="print the Varlink reply as JSON")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)
    for group in VERB_GROUPS:
        group.register(verbs)
    return parser


def exit_code(exc: TimelinedError) -> int:
    if isinstance(exc, DaemonUnavailable):
        return EX_UNAVAILABLE
    if isinstance(exc, InvalidParameter | InvalidArgument | BadQuery):
        return EX_DATAERR
    if isinstance(exc, ConfigError):
        return EX_CONFIG
    if isinstance(exc, ProtocolError | MethodNotFound | MethodNotImplemented | InterfaceNotFound):
        return EX_SOFTWARE
    if exc.name == "InternalError":
        return EX_SOFTWARE
    return EX_REFUSED


def report_error(out: Output, exc: TimelinedError) -> None:
    if out.json:
        body = {"error": exc.varlink_name, "parameters": dict(exc.params)}
        out.stderr.write(msgspec.json.encode(body).decode("utf-8") + "\n")
        return
    out.stderr.write(f"timelinectl: {exc.message} ({exc.varlink_name})\n")
    if isinstance(exc, DaemonUnavailable):
        out.stderr.write(
            "timelinectl: is the daemon running? Start it with `make run` or "
            "`systemctl start timelined`; or point --socket / $TIMELINED_SOCKET at it\n"
        )


def main(argv: Sequence[str] | None = None) -> int:
    # `timelinectl log | head` must end quietly, not with a BrokenPipeError traceback. Called
    # with `argv` (from Python, tests), the caller's SIGPIPE handling is given back after.
    previous = signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return _run(argv)
    finally:
        if argv is not None:
            signal.signal(signal.SIGPIPE, previous)


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    out = Output(json=args.json)
    ctl = Ctl(args, out)
    try:
        code: int = args.run(ctl)
        return code
    except TimelinedError as exc:
        report_error(out, exc)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130
    finally:
        ctl.close()


if __name__ == "__main__":
    sys.exit(main())
