"""Write (or, with --check, compare) the `.varlink` files of timelined's interfaces.

    python -m timelined.api.gen [--check]

The files live beside this module in `interfaces/`; the varlink library is told where.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from timelined.api.methods import INTERFACES
from timelined.varlink.gen import check_interface_files, write_interface_files

INTERFACE_DIR = Path(__file__).resolve().parent / "interfaces"
COMMAND = "python -m timelined.api.gen"


def stale_interface_files(directory: Path = INTERFACE_DIR) -> list[str]:
    """One diff (or 'missing' note) per interface file that differs from the declarations."""
    return check_interface_files(INTERFACES, directory)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=INTERFACE_DIR, help="output directory")
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale_interface_files(args.dir)
        for problem in problems:
            sys.stderr.write(problem if problem.endswith("\n") else problem + "\n")
        if problems:
            sys.stderr.write(f"run {COMMAND} to regenerate them\n")
        return 1 if problems else 0
    for path in write_interface_files(INTERFACES, args.dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
