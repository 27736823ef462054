"""Each examples/ script runs against a daemon named by TIMELINED_SOCKET, as after `make run`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.daemon.harness import REPO, DaemonProcess


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("openai_agents_session.py", "sidebar: {'content': 'And tomorrow?', 'role': 'user'}"),
        ("langchain_history.py", "ai: Sunny."),
    ],
)
def test_example_runs_against_the_daemon(daemon: DaemonProcess, script: str, expected: str) -> None:
    env = {**os.environ, "TIMELINED_SOCKET": str(daemon.socket_path)}
    for _ in range(2):  # a second run starts over (clear) on the same session id
        done = subprocess.run(
            [sys.executable, str(REPO / "examples" / script), "example-test"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout, done.stdout
    if script == "openai_agents_session.py":
        lines = done.stdout.splitlines()
        # Items come back equal, their keys sorted (the log's encoder sorts object keys).
        assert lines[1] == "popped: {'content': 'Sunny.', 'role': 'assistant'}"
        # The sidebar inherits the last 2 items left after the pop.
        assert [ln for ln in lines if ln.startswith("sidebar:")] == [
            "sidebar: {'arguments': '{}', 'call_id': 'c1', 'name': 'weather', "
            "'type': 'function_call'}",
            "sidebar: {'call_id': 'c1', 'output': 'sunny', 'type': 'function_call_output'}",
            "sidebar: {'content': 'And tomorrow?', 'role': 'user'}",
        ]
