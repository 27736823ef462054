"""Paths and helpers shared by the systemd tests."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
PYTHON = sys.executable


def require_tool(name: str) -> str:
    """The tool's path, or skip the test saying which package provides it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian/Ubuntu: apt install systemd)")
    return path


def child_env(**extra: str) -> dict[str, str]:
    """An environment for a child Python that imports this checkout's timelined."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    env.pop("JOURNAL_STREAM", None)
    env.pop("WATCHDOG_USEC", None)
    env.pop("WATCHDOG_PID", None)
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env
