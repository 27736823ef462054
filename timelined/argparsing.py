"""argparse for both command-line tools: a bad command line exits 64 (EX_USAGE, sysexits)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar, NoReturn

import msgspec


class UsageParser(argparse.ArgumentParser):
    """argparse, exiting 64 (EX_USAGE) on a bad command line instead of 2; while `json_errors`
    is on, the error is a JSON object like every other error of the tool's --json mode."""

    json_errors: ClassVar[bool] = False

    def error(self, message: str) -> NoReturn:
        if UsageParser.json_errors:
            tool = self.prog.split()[0]
            body = {
                "error": f"{tool}.UsageError",
                "parameters": {"message": message, "usage": " ".join(self.format_usage().split())},
            }
            self.exit(os.EX_USAGE, msgspec.json.encode(body).decode("utf-8") + "\n")
        self.print_usage(sys.stderr)
        self.exit(os.EX_USAGE, f"{self.prog}: error: {message}\n")


@contextmanager
def json_usage_errors(argv: Sequence[str]) -> Iterator[None]:
    """Usage errors as JSON while parsing a command line that asks for --json."""
    before = UsageParser.json_errors
    UsageParser.json_errors = "--json" in argv
    try:
        yield
    finally:
        UsageParser.json_errors = before
