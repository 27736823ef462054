"""argparse for both command-line tools: a bad command line exits 64 (EX_USAGE, sysexits)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn


class UsageParser(argparse.ArgumentParser):
    """argparse, exiting 64 (EX_USAGE) on a bad command line instead of 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(os.EX_USAGE, f"{self.prog}: error: {message}\n")
