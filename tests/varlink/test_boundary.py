"""`timelined.varlink` is a library of its own: it imports nothing of timelined but itself.

What the daemon needs it to know (error names, limits) is injected (`daemon/varlink_setup.py`),
so that the library could leave the repository without taking timelined along.
"""

from __future__ import annotations

import ast
from pathlib import Path

import timelined.varlink

PACKAGE = "timelined.varlink"
ROOT = Path(timelined.varlink.__file__).parent


def foreign_imports(source: str, package: str) -> list[str]:
    """The timelined modules outside PACKAGE that `source`, a module of `package`, imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `.` is `package`, each further dot its parent
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            # `from timelined import errors` imports the module timelined.errors
            names = [f"{base}.{alias.name}" for alias in node.names] if base else []
        for name in names:
            inside = name == PACKAGE or name.startswith(PACKAGE + ".")
            if (name == "timelined" or name.startswith("timelined.")) and not inside:
                found.append(name)
    return found


def test_the_checker_sees_every_form_of_import() -> None:
    source = (
        "import timelined.errors\n"
        "from timelined.config import LimitsConfig\n"
        "from timelined import errors\n"
        "from .. import config\n"
        "def f():\n    from timelined.daemon import methods\n"
        "import timelined.varlink.framing\n"
        "from timelined.varlink import errors as ok\n"
        "from . import protocol\n"
    )
    assert foreign_imports(source, "timelined.varlink") == [
        "timelined.errors",
        "timelined.config.LimitsConfig",
        "timelined.errors",
        "timelined.config",
        "timelined.daemon.methods",
    ]


def test_the_varlink_library_imports_nothing_of_timelined_outside_itself() -> None:
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) >= 8  # the walk found the package
    offenders = {}
    for path in files:
        package = ".".join([PACKAGE, *path.parent.relative_to(ROOT).parts])
        found = foreign_imports(path.read_text(encoding="utf-8"), package)
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}
