"""`python -m timelined.verifier --state-dir DIR [--json]`: offline verification (as `timelined
verify`), for tests and for hosts without the `timelined` script."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from timelined.verifier.offline import run_offline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m timelined.verifier")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    args = parser.parse_args(argv)
    return run_offline(args.state_dir, as_json=args.json, progress=sys.stderr.isatty())


if __name__ == "__main__":
    sys.exit(main())
