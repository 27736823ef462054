"""timelinectl: talk to timelined from a shell.

    timelinectl [--socket PATH] [--json] VERB ...

Human output by default (tables, a tree for `tree`); `--json` prints the Varlink reply as JSON.
Errors go to stderr; with --json as one JSON object, `{"error": NAME, "parameters": {...,
"message": ...}}`: the daemon's errors are named by their interface,
`io.timelined.Timeline.<Name>` or `io.timelined.Admin.<Name>`, as received; timelinectl's own
refusals `timelinectl.<Name>` (UsageError, CannotRead, CannotWrite, BadExport, cosign's
BadWitnessKey, and export-log's DirectoryNotEmpty, NotADirectory, WriteFailed, BadLog).
Exit codes (sysexits):

    0   ok
    1   refused: the daemon answered with a named error (ContextNotFound, InvalidTransition,
        ...); also `verify --wait` when the run found a problem, and `audit` / `prove` /
        `verify-export` when a checkpoint or proof does not verify (CheckpointInvalid) or the
        history changed (HistoryRewritten)
    64  usage: bad command line (also `append` with no content argument and empty stdin)
    65  bad data: InvalidParameter, InvalidArgument, BadQuery; a file to import that is cut off;
        a log line export-log received that does not chain (BadLog); cosign's --witness-key
        read but holding no signer key (BadWitnessKey, naming the file and the problem)
    66  no input: a file to import does not exist (also verify-export's files, cosign's
        --witness-key); the checkpoint file of audit/cosign --since cannot be read (a
        directory, no permission; a missing one is a first audit)
    69  unavailable: the daemon is not running or cannot be reached
    70  software: an internal error or a reply that breaks the protocol
    73  cannot create: an output file (export -o, metrics --textfile, witness-key --out, which
        never overwrites a file, the checkpoint file of audit/cosign --since when it cannot be
        written), export-log's DIR
    74  I/O error: writing an output file or stdout failed (`timelinectl log > /dev/full`)
    77  no permission: this user may not open the daemon's socket, or [auth] refused the call
        (PermissionDenied)
    78  config: the config file (used to find the socket) was refused
    141 stdout was closed early (`timelinectl log | head`): it stops quietly, as a program
        killed by SIGPIPE would (128 + 13), without its message or a traceback

`--json` may stand anywhere: before the verb or among its arguments (after `--` it is an
argument). A verb's options and positionals may come in any order (`append CTX --role user
TEXT`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from timelined import __version__
from timelined.argparsing import UsageParser, VerbParser, error_line, json_usage_errors
from timelined.client import (
    InterfaceNotFound,
    InvalidParameter,
    MethodNotFound,
    MethodNotImplemented,
)
from timelined.ctl import (
    admin,
    blocks,
    contexts,
    conversations,
    exportlog,
    streams,
    transparency,
)
from timelined.ctl.common import EX_IOERR, Ctl
from timelined.ctl.output import Output, escape
from timelined.errors import (
    BadQuery,
    ConfigError,
    DaemonUnavailable,
    InvalidArgument,
    LocalError,
    PermissionDenied,
    ProtocolError,
    TimelinedError,
)
from timelined.stdout import OutputFailed, run_writing

EX_OK = 0
EX_REFUSED = 1
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_NOPERM = 77
EX_CONFIG = 78

VERB_GROUPS = (admin, exportlog, conversations, contexts, blocks, streams, transparency)


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="timelinectl",
        description="Talk to timelined: conversations, contexts, blocks, and administration.",
        epilog="Exit codes: 0 ok, 1 refused, 64 usage, 65 bad data, 66 no input file, 69 daemon "
        "unavailable, 70 internal error, 73 cannot create an output file, 74 I/O error, 77 no "
        "permission (the socket, or [auth] refused the call), 78 config, 141 stdout closed "
        "early (e.g. by `| head`).",
    )
    parser.add_argument("--version", action="version", version=f"timelinectl {__version__}")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="the daemon's socket (default: $TIMELINED_SOCKET, else the config's socket_path)",
    )
    parser.add_argument("--json", action="store_true", help="print the Varlink reply as JSON")
    verbs = parser.add_subparsers(
        dest="verb", required=True, metavar="VERB", parser_class=VerbParser
    )
    for group in VERB_GROUPS:
        group.register(verbs)
    return parser


def take_json(words: Sequence[str]) -> tuple[list[str], bool]:
    """`words` without `--json`, and whether it was there: --json may stand anywhere, before
    the verb or among its arguments (`append CTX --json TEXT`), which argparse cannot take
    after a verb's optional positional. Safe, as argparse never takes the word `--json` as an
    option's value or a positional either; after `--` it is a positional and stays."""
    end = words.index("--") if "--" in words else len(words)
    kept = [w for w in words[:end] if w != "--json"] + list(words[end:])
    return kept, len(kept) != len(words)


def _no_permission(exc: TimelinedError) -> bool:
    """The socket could not be opened for want of permission (the OS error it came from)."""
    return isinstance(exc, DaemonUnavailable) and isinstance(exc.__cause__, PermissionError)


def exit_code(exc: TimelinedError) -> int:
    if _no_permission(exc) or isinstance(exc, PermissionDenied):
        return EX_NOPERM
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
        out.stderr.write(error_line(exc.varlink_name, exc.params))
        return
    out.stderr.write(f"timelinectl: {escape(exc.message)} ({escape(exc.varlink_name)})\n")
    if _no_permission(exc) and "directory" in str(exc.params.get("reason", "")):
        out.stderr.write(
            "timelinectl: the socket lies in a directory this user may not enter (a state "
            "directory is private to the daemon's user and `state_group`): put `socket_path` "
            "outside it to share the socket (see docs/operations.md, 'Who may read the state "
            "directory')\n"
        )
    elif _no_permission(exc):
        out.stderr.write(
            "timelinectl: this user may not open the socket: it is for the socket's group "
            "(`timelined` under systemd; see docs/operations.md, 'Who may use the socket')\n"
        )
    elif isinstance(exc, DaemonUnavailable):
        out.stderr.write(
            "timelinectl: is the daemon running? Start it with `make run` or "
            "`systemctl start timelined`; or point --socket / $TIMELINED_SOCKET at it\n"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """`timelinectl log | head` ends quietly with EX_PIPE, `timelinectl log > /dev/full` with
    EX_IOERR and one line (timelined.stdout.run_writing). The socket's own errors never arrive
    here as OSError: the client names them."""
    words = list(sys.argv[1:] if argv is None else argv)
    without_json, as_json = take_json(words)
    out = Output(json=as_json)

    def failed(exc: OutputFailed) -> int:
        return out.fail(EX_IOERR, "CannotWrite", f"cannot write stdout: {exc}", path="<stdout>")

    return run_writing(out.stdout, lambda: _run(words, without_json, out), failed)


def _run(words: Sequence[str], without_json: Sequence[str], out: Output) -> int:
    with json_usage_errors(words):
        args = build_parser().parse_args(without_json)
    ctl = Ctl(args, out, words)
    try:
        code: int = args.run(ctl)
        return code
    except LocalError:
        # Not the daemon's answer: OutputFailed is run_writing's (exit 74), anything else a
        # bug of timelinectl's, its traceback shown as for any other exception.
        raise
    except TimelinedError as exc:
        report_error(out, exc)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130
    finally:
        ctl.close()


if __name__ == "__main__":
    sys.exit(main())
