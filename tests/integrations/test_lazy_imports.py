"""The integrations import nothing of their framework until used (`python -X importtime`)."""

from __future__ import annotations

import subprocess
import sys

from tests.daemon.harness import REPO

FRAMEWORKS = frozenset({"agents", "langchain_core", "openai", "pydantic", "langsmith"})


def _imported(code: str) -> set[str]:
    """The frameworks' top-level packages `python -X importtime -c code` imports."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    names = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    return names & FRAMEWORKS


def test_importing_the_integrations_loads_no_framework() -> None:
    assert _imported("import timelined.integrations.openai_agents") == set()
    assert _imported("import timelined.integrations.langchain") == set()
    assert _imported("from timelined.integrations.openai_agents import TimelinedSession") == set()


def test_the_langchain_class_loads_langchain_on_first_use() -> None:
    code = "from timelined.integrations.langchain import TimelinedChatMessageHistory"
    assert "langchain_core" in _imported(code)
