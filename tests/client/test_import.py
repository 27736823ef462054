"""`import timelined.client` stays light: no engine, rules, SQL, log writer or daemon.

Measured in a fresh interpreter with `python -X importtime`, which names every module imported.
"""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = (
    "timelined.writer",
    "timelined.state",
    "timelined.auditlog.writer",
    "timelined.daemon",
    "sqlite3",
    "aiosqlite",
    # Not wrong to need, but slow to load and needed only by a server or an audit (import time,
    # reported by `make bench`'s client part): loaded when used.
    "timelined.varlink.server",
    "cryptography",
)


def imported_modules(statement: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # Lines: "import time: self [us] | cumulative | imported package" (indented by depth).
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    } - {"imported package"}


def forbidden(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)}


def test_importtime_names_the_modules_it_imports() -> None:
    modules = imported_modules("import timelined.client")
    assert {"timelined.client", "timelined.client_sync", "msgspec"} <= modules
    assert forbidden(imported_modules("import sqlite3")) >= {"sqlite3"}  # the check can see


def test_the_client_imports_nothing_forbidden() -> None:
    found = forbidden(imported_modules("import timelined.client"))
    assert not found, f"import timelined.client imports {sorted(found)}"
