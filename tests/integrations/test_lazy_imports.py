"""The integrations import nothing of their framework until used."""

from __future__ import annotations

import subprocess
import sys

from tests.daemon.harness import REPO

FRAMEWORKS = ("agents", "langchain_core", "openai", "pydantic", "langsmith")


def _loaded(code: str) -> list[str]:
    probe = (
        f"{code}\nimport sys\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()}
    assert not imported & {"agents", "langchain_core"} or code.endswith("History")
    return eval(done.stdout)  # type: ignore[no-any-return]


def test_importing_the_integrations_loads_no_framework() -> None:
    assert _loaded("import timelined.integrations.openai_agents") == []
    assert _loaded("import timelined.integrations.langchain") == []


def test_the_langchain_class_loads_langchain_on_first_use() -> None:
    code = "from timelined.integrations.langchain import TimelinedChatMessageHistory"
    assert "langchain_core" in _loaded(code)
