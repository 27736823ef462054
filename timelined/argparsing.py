"""What both command-line tools share: argparse that exits 64 (EX_USAGE, sysexits) on a bad
command line, and the one JSON form of an error that --json prints on stderr."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, TextIO, cast

import msgspec

from timelined import stdout

if TYPE_CHECKING:
    from _typeshed import SupportsWrite


def error_line(name: str, params: Mapping[str, Any]) -> str:
    """`{"error": NAME, "parameters": {...}}` and a newline: the daemon's errors as the tools
    print them with --json, and the tools' own in the same shape."""
    return msgspec.json.encode({"error": name, "parameters": dict(params)}).decode() + "\n"


class UsageParser(argparse.ArgumentParser):
    """argparse, exiting 64 (EX_USAGE) on a bad command line instead of 2; while `json_errors`
    is on, the error is a JSON object like every other error of the tool's --json mode."""

    json_errors: ClassVar[bool] = False

    def error(self, message: str) -> NoReturn:
        if UsageParser.json_errors:
            usage = " ".join(self.format_usage().split())
            name = f"{self.prog.split()[0]}.UsageError"
            self.exit(os.EX_USAGE, error_line(name, {"message": message, "usage": usage}))
        self.print_usage(sys.stderr)
        self.exit(os.EX_USAGE, f"{self.prog}: error: {message}\n")

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        # argparse drops a failed write. --help's and --version's text is the command's
        # output: a full disk must end it with EX_IOERR and a closed pipe with EX_PIPE
        # (timelined.stdout.run_writing), not pass for success with nothing written.
        if message and file is sys.stdout:
            stdout.write(cast("TextIO", file), message)
        else:
            super()._print_message(message, file)


class VerbParser(UsageParser):
    """A verb's parser: its options and positionals in any order (`append CTX --role user
    TEXT`), which plain argparse refuses when an optional positional (`nargs="?"`) comes
    before an option ("unrecognized arguments: TEXT"). argparse's intermixed parsing, used
    where it applies: not for a parser with subcommands of its own (`xref`), whose
    subcommands' parsers take this class and mix in turn."""

    _mixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        nested = any(
            action.nargs in (argparse.PARSER, argparse.REMAINDER)
            for action in self._get_positional_actions()
        )
        if self._mixing or nested:
            return super().parse_known_args(args, namespace)
        self._mixing = True  # parse_known_intermixed_args calls back here, twice
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


@contextmanager
def json_usage_errors(argv: Sequence[str]) -> Iterator[None]:
    """Usage errors as JSON while parsing a command line that asks for --json."""
    before = UsageParser.json_errors
    UsageParser.json_errors = "--json" in argv
    try:
        yield
    finally:
        UsageParser.json_errors = before
