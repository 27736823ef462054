"""timelinectl's renderings, without a daemon: tree, tables, verifier progress and verdicts."""

from __future__ import annotations

import io

import msgspec

from timelined.api.model import Context
from timelined.ctl.admin import _failed, _progress, _verify_summary
from timelined.ctl.output import Output, render_tree, show_context


def ctx(id: str, parent: str | None, status: str = "active", blocks: int = 0) -> Context:
    return Context(
        id=id,
        conversation_id="conv_1",
        parent_id=parent,
        status=status,  # type: ignore[arg-type]
        reason="" if parent is None else f"why {id}",
        created_at="t",
        updated_at="t",
        block_count=blocks,
    )


class Ascii(io.StringIO):
    encoding = "ascii"


class Utf8(io.StringIO):
    encoding = "utf-8"


TREE = [
    ctx("root", None, "paused", 3),
    ctx("a", "root", "merged", 1),
    ctx("b", "root", "active"),
    ctx("a1", "a", "archived"),
    ctx("b1", "b", "paused"),
    ctx("b2", "b", "active"),
]


def test_tree_unicode() -> None:
    lines = render_tree(Output(stdout=Utf8()), TREE, focused="b2")
    assert lines == [
        "‖ root  paused  3 blocks",
        '├─ ✔ a  merged  1 block  "why a"',
        '│  └─ ✖ a1  archived  0 blocks  "why a1"',
        '└─ ● b  active  0 blocks  "why b"',
        '   ├─ ‖ b1  paused  0 blocks  "why b1"',
        '   └─ ● b2  active  0 blocks  "why b2" ← focus',
    ]


def test_tree_ascii() -> None:
    lines = render_tree(Output(stdout=Ascii()), TREE, focused="root")
    assert lines[0] == "= root  paused  3 blocks <- focus"
    assert lines[2] == '|  `- x a1  archived  0 blocks  "why a1"'
    assert all(line.isascii() for line in lines)


def test_table_cuts_the_last_column_and_escapes_newlines() -> None:
    out = Output(stdout=Utf8(), stderr=Utf8())
    out.table(["A", "TEXT"], [["1", "line one\nline two " + "x" * 500]])
    text = out.stdout.getvalue()  # type: ignore[attr-defined]
    assert text.splitlines()[1].startswith("1  line one\\nline two")
    assert text.rstrip().endswith("…") and "\n" not in text.splitlines()[1]
    out.table(["A"], [])
    assert "(none)" in out.stderr.getvalue()  # type: ignore[attr-defined]


def test_verifier_progress_and_verdicts() -> None:
    running = {"state": "running", "progress": {"phase": "replay", "done": 50, "total": 200}}
    assert _progress(running) == "verifying (replay): 25% (50/200)"
    assert _progress({"state": "ok"}) is None
    assert "25%" in _verify_summary(running)
    assert _verify_summary({"state": "never"}) == "never"
    assert not _failed({"state": "ok", "differences": []})
    assert _failed({"state": "drift", "differences": [{"entity": "blocks"}]})
    assert _failed({"state": "damaged"})
    assert not _failed(None)


def test_a_context_shown_without_its_references_says_how_to_list_them() -> None:
    out = Output(stdout=Utf8())
    wide = msgspec.structs.replace(ctx("side", "root"), crossrefs_omitted=True)
    show_context(out, wide)
    text = out.stdout.getvalue()  # type: ignore[attr-defined]
    assert "xref      too many for one reply: timelinectl xref list side" in text
    out = Output(stdout=Utf8())
    show_context(out, ctx("side", "root"))
    assert "xref" not in out.stdout.getvalue()  # type: ignore[attr-defined]
