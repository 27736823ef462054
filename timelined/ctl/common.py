"""What every verb of timelinectl shares: the client, the parsed arguments, the output."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import msgspec

from timelined.client import Client
from timelined.ctl.output import Output

TIMELINE = "io.timelined.Timeline."
ADMIN = "io.timelined.Admin."
EX_USAGE = 64  # sysexits: a bad command line
EX_DATAERR = 65  # sysexits: bad input data
EX_NOINPUT = 66  # sysexits: an input file that cannot be read
EX_CANTCREAT = 73  # sysexits: an output file that cannot be created
EX_IOERR = 74  # sysexits: writing failed (an output file, stdout)


@dataclass
class Ctl:
    """One run of timelinectl: `call` a method, print with `out`."""

    args: argparse.Namespace
    out: Output
    argv: Sequence[str] = ()  # the command line after `timelinectl`, for `more`
    _client: Client | None = field(default=None, repr=False)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.args.socket)
        return self._client

    def call(self, method: str, **params: Any) -> Any:
        """The method by its full name, parameters left out when None; the typed reply."""
        return self.client.call(method, {k: v for k, v in params.items() if v is not None})

    def more(self, option: str, value: object) -> None:
        """Tell how to get the next page: this command line again, with `option value` in place
        of any `option` it had (every filter and option given is kept)."""
        words: list[str] = []
        skip = False
        for word in self.argv:
            if skip:
                skip = False
            elif word == option:
                skip = True
            elif not word.startswith(option + "="):
                words.append(word)
        self.out.note("more: " + shlex.join(["timelinectl", *words, option, str(value)]))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


Run = Callable[[Ctl], int]
Verbs: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object."""
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def json_array(text: str) -> list[Any]:
    """An argparse type: a JSON array."""
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError("expected a JSON array")
    return value


def count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _at_least(text, 0)


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _at_least(text, 1)


def _at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {least} or more")
    return value
