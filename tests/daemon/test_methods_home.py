"""daemon/methods.py maps calls and nothing else: no SQL and no report file read in it (the
state's reads are state/'s, the reports directory's recovery/reports.py's)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import timelined.daemon.methods as methods

_SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|BEGIN|COMMIT|ROLLBACK|PRAGMA)\b", re.I)
# Calls that would read SQLite or files themselves.
_IO_CALLS = {
    "execute",
    "executemany",
    "fetchone",
    "fetchall",
    "cursor",
    "read_bytes",
    "read_text",
    "iterdir",
    "glob",
    "open",
    "open_read",
    "read_report",
    "list_reports",
}


def _tree() -> ast.Module:
    return ast.parse(Path(methods.__file__).read_text(encoding="utf-8"))


def test_methods_holds_no_sql_string() -> None:
    found = [
        node.value
        for node in ast.walk(_tree())
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.match(node.value)
    ]
    assert found == []


def test_methods_does_no_sqlite_or_file_reads_itself() -> None:
    called = set()
    for node in ast.walk(_tree()):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            called.add(name)
        if isinstance(node, ast.ImportFrom | ast.Import):
            modules = [node.module] if isinstance(node, ast.ImportFrom) else []
            modules += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            assert "sqlite3" not in modules
            assert "timelined.state.db" not in modules
            assert "timelined.recovery.report" not in modules
    assert called & _IO_CALLS == set()
