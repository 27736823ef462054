"""The long torture runs: only under `make stress ROUNDS=N` (TIMELINED_STRESS_ROUNDS=N).

`make test` collects this package too; every test marked `stress` is skipped there unless
TIMELINED_STRESS_ROUNDS is set, so the normal suite stays short.
"""

from __future__ import annotations

import os

import pytest

from tests.stress.rounds import ROUNDS_ENV, SUMMARY


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stress: long torture runs; make stress ROUNDS=N")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(ROUNDS_ENV):
        return
    skip = pytest.mark.skip(reason=f"stress test: run with make stress ROUNDS=N ({ROUNDS_ENV})")
    for item in items:
        if item.get_closest_marker("stress") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in SUMMARY:
        terminalreporter.write_line(line)
