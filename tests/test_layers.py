"""The import diagram of docs/architecture.md is the code's: every import follows an arrow of it.

The diagram's machine-read part is the ```layers block: each component and what it may import
directly (the shared vocabulary may be imported by every component). This test reads every module
of the package, maps each `import timelined.…` to its component, and fails on an import the
block does not allow, on a cycle (an upward arrow), and on any path by which the client or
timelinectl could reach the writer, the state, the log writer or the daemon.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "timelined"
DOC = ROOT / "docs" / "architecture.md"
VOCABULARY = "vocabulary"
# The audit log's writing side (appending, the tail scan and its repair) is a component of its
# own: readers (the client's frame check, timelinectl's export) use only the reading side.
LOG_WRITING = frozenset({"writer", "scan", "repair"})
CLIENT_SIDE = ("client", "client_common", "client_sync", "ctl", "integrations")
NEVER_FROM_CLIENT = frozenset(
    {"writer", "auditlog.write", "state", "daemon", "recovery", "verifier", "exchange"}
)


def read_diagram(text: str) -> dict[str, frozenset[str]]:
    """The ```layers block: `component: dependency …` per line (# starts a comment)."""
    found = re.search(r"^```layers\n(.*?)^```", text, re.S | re.M)
    assert found, f"{DOC} has no ```layers block"
    allowed: dict[str, frozenset[str]] = {}
    for line in found.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, deps = line.partition(":")
        allowed[name.strip()] = frozenset(deps.split())
    return allowed


def component(module: str) -> str:
    """`timelined.auditlog.scan` → `auditlog.write`; `timelined.state.db` → `state`; the
    package's own attributes (`timelined.__version__`) → `timelined`."""
    parts = module.split(".")
    if len(parts) == 1:
        return "timelined"
    if parts[1] == "auditlog":
        return "auditlog.write" if len(parts) > 2 and parts[2] in LOG_WRITING else "auditlog"
    first = PACKAGE / parts[1]
    if first.is_dir() or first.with_suffix(".py").exists():
        return parts[1]
    return "timelined"


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imports(path: Path) -> Iterator[str]:
    """Every timelined module `path` imports (at any depth of the file, TYPE_CHECKING too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("timelined"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "timelined":
                yield from (f"timelined.{a.name}" for a in node.names)
            elif node.module.startswith("timelined."):
                yield node.module


def real_edges() -> dict[tuple[str, str], str]:
    """(importer, imported) component pairs, each with one place that shows it."""
    edges: dict[tuple[str, str], str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = component(module_name(path))
        for target in imports(path):
            edge = (source, component(target))
            if edge[0] != edge[1]:
                edges.setdefault(edge, f"{path.relative_to(ROOT)} imports {target}")
    return edges


def closure(allowed: dict[str, frozenset[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for dep in allowed.get(todo.pop(), frozenset()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


@pytest.fixture(scope="module")
def allowed() -> dict[str, frozenset[str]]:
    return read_diagram(DOC.read_text())


def violations(allowed: dict[str, frozenset[str]], edges: dict[tuple[str, str], str]) -> list[str]:
    """Each import that no arrow of the diagram allows, with where it is."""
    vocabulary = allowed[VOCABULARY]
    wrong = []
    for (source, target), where in edges.items():
        if target in vocabulary:
            continue  # anyone may use the shared vocabulary
        if source in vocabulary:
            wrong.append(f"{where}: the vocabulary imports {target}")
        elif source not in allowed:
            wrong.append(f"{where}: {source} is not in the diagram")
        elif target not in allowed[source]:
            wrong.append(f"{where}: no arrow {source} -> {target}")
    return wrong


def test_every_import_follows_an_arrow_of_the_diagram(allowed: dict[str, frozenset[str]]) -> None:
    wrong = violations(allowed, real_edges())
    assert not wrong, "\n".join(wrong)


def test_the_diagram_has_no_upward_arrow(allowed: dict[str, frozenset[str]]) -> None:
    for name in allowed:
        assert name not in closure(allowed, name), f"{name} can reach itself: a cycle"
    real: dict[str, set[str]] = {}
    for source, target in real_edges():
        real.setdefault(source, set()).add(target)
    for name in real:
        assert name not in closure({k: frozenset(v) for k, v in real.items()}, name), name


def test_the_client_never_reaches_the_writer(allowed: dict[str, frozenset[str]]) -> None:
    for start in CLIENT_SIDE:
        reached = closure(allowed, start) & NEVER_FROM_CLIENT
        assert not reached, f"{start} may reach {sorted(reached)}"


def test_the_checker_sees_what_it_must(allowed: dict[str, frozenset[str]]) -> None:
    assert component("timelined.auditlog.scan") == "auditlog.write"
    assert component("timelined.auditlog.record") == "auditlog"
    assert component("timelined.writer.engine") == "writer"
    assert component("timelined.__version__") == "timelined"
    edges = real_edges()
    assert ("daemon", "writer") in edges and ("client", "api") in edges
    upward = {**edges, ("client", "writer"): "timelined/client.py imports timelined.writer.engine"}
    assert violations(allowed, upward) == [
        "timelined/client.py imports timelined.writer.engine: no arrow client -> writer"
    ]
