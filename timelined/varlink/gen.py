"""Write (or check) the `.varlink` files from the Python interface declarations.

    python -m timelined.varlink.gen [--check] --dir DIR MODULE:ATTR [MODULE:ATTR ...]

MODULE:ATTR names an `Interface` or a sequence of them. Each is written to
`DIR/<interface name>.varlink`. With `--check` nothing is written; the exit status is 1 when a
file differs from its declaration, with the diff on stderr — the same comparison the test suite
makes. An application wraps it with its own sources and directory.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from timelined.varlink.interface import Interface, check_interface_file, iter_interfaces

__all__ = [
    "assert_interface_files_current",
    "check_interface_files",
    "load_interfaces",
    "main",
    "write_interface_files",
]


def load_interfaces(spec: str) -> list[Interface]:
    """The interfaces named by `module:attr`."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"{spec!r}: expected MODULE:ATTR")
    obj = getattr(importlib.import_module(module_name), attr)
    return list(iter_interfaces(obj))


def write_interface_files(interfaces: Iterable[Interface], directory: str | Path) -> list[Path]:
    """Write each interface's text to `directory/<name>.varlink`; the paths written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for interface in interfaces:
        path = out / interface.file_name
        text = interface.description
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def check_interface_files(interfaces: Iterable[Interface], directory: str | Path) -> list[str]:
    """One diff (or 'missing' note) per file that does not equal its declaration."""
    problems = []
    for interface in interfaces:
        problem = check_interface_file(interface, Path(directory) / interface.file_name)
        if problem is not None:
            problems.append(problem)
    return problems


def assert_interface_files_current(
    interfaces: Iterable[Interface], directory: str | Path, *, command: str | None = None
) -> None:
    """For tests: fail with the diff and `command`, the command that fixes it."""
    problems = check_interface_files(interfaces, directory)
    if problems:
        fix = command or f"python -m timelined.varlink.gen --dir {directory} MODULE:ATTR"
        raise AssertionError(
            "the committed .varlink files differ from the Python declarations; run\n"
            f"    {fix}\n" + "\n".join(problems)
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m timelined.varlink.gen", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("sources", nargs="+", metavar="MODULE:ATTR")
    parser.add_argument("--dir", type=Path, required=True, help="output directory")
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    interfaces = [i for spec in args.sources for i in load_interfaces(spec)]
    if args.check:
        problems = check_interface_files(interfaces, args.dir)
        for problem in problems:
            sys.stderr.write(problem if problem.endswith("\n") else problem + "\n")
        return 1 if problems else 0
    for path in write_interface_files(interfaces, args.dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
