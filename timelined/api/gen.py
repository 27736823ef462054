"""Write (or, with --check, compare) the `.varlink` files of timelined's interfaces.

    python -m timelined.api.gen [--check]

The files live beside this package in `interfaces/`; the Varlink library's generator is told
which declarations to render and where to write them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from timelined.api.methods import INTERFACES
from timelined.varlink import gen

INTERFACE_DIR = Path(__file__).resolve().parent / "interfaces"
SOURCE = "timelined.api.methods:INTERFACES"
COMMAND = "python -m timelined.api.gen"


def stale_interface_files(directory: Path = INTERFACE_DIR) -> list[str]:
    """One diff (or 'missing' note) per interface file that differs from the declarations."""
    return gen.check_interface_files(INTERFACES, directory)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return gen.main([SOURCE, "--dir", str(INTERFACE_DIR), *args])


if __name__ == "__main__":
    raise SystemExit(main())
