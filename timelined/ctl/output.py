"""How timelinectl prints: the Varlink reply as JSON (`--json`), or tables and trees for people."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import msgspec

from timelined.api.model import Context, Conversation
from timelined.argparsing import error_line
from timelined.stdout import flush as flush_stream
from timelined.stdout import write as write_stream

# C0 controls, DEL and C1 controls: what a terminal may take as the start of an escape sequence
# (CSI, OSC, ...) or as cursor movement. Printed as `\xNN`, so a name or a block's content can
# neither retitle, recolour nor erase the terminal it is shown on.
_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
_ONE_LINE = str.maketrans({c: f"\\x{c:02x}" for c in _CONTROLS} | {0x0A: "\\n", 0x09: "\\t"})
_MULTILINE = str.maketrans({c: f"\\x{c:02x}" for c in _CONTROLS if c not in (0x0A, 0x09)})


def escape(text: str, *, multiline: bool = False) -> str:
    """`text` safe for a terminal: control characters as `\\x1b` (`\\n` and `\\t` too unless
    `multiline`, where a newline or a tab is the content's own). Idempotent. The one escaping of
    human output: every one-line field (a table's cell, a `key  value` field, the tree, `log`
    and `watch` lines) shows a newline as `\\n`, as the README says."""
    return text.translate(_MULTILINE if multiline else _ONE_LINE)


@dataclass
class Output:
    """Where and how a verb writes; `json` selects the machine form."""

    json: bool = False
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    def reply(self, reply: Any, human: Callable[[], None]) -> None:
        """The Varlink reply as JSON with --json, else what `human` prints."""
        if self.json:
            self.print_json(reply)
        else:
            human()

    def write(self, text: str) -> None:
        """The one place stdout is written: all of `text`, or BrokenPipeError / OutputFailed."""
        write_stream(self.stdout, text)

    def flush(self) -> None:
        """Flush stdout; errors as for write()."""
        flush_stream(self.stdout)

    def print_json(self, value: Any) -> None:
        encoded = msgspec.json.format(msgspec.json.encode(value), indent=2)
        self.write(encoded.decode("utf-8") + "\n")

    def line(self, text: str = "") -> None:
        """One or more lines for people; control characters escaped (newlines and tabs kept)."""
        self.write(escape(text, multiline=True) + "\n")

    def text(self, text: str) -> None:
        """Text that brings its own line ends (metrics), control characters escaped."""
        self.write(escape(text, multiline=True))

    def lines(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.line(text)

    def note(self, text: str) -> None:
        """A remark for people (paging hints and the like), on stderr so pipes stay clean."""
        self.stderr.write(escape(text, multiline=True) + "\n")

    def fail(self, code: int, name: str, message: str, **params: Any) -> int:
        """A refusal timelinectl makes itself (no daemon involved), on stderr; returns `code`.

        With --json it has the shape of the daemon's errors, named `timelinectl.<name>`, so a
        script reads every error the same way.
        """
        if self.json:
            self.stderr.write(error_line(f"timelinectl.{name}", {**params, "message": message}))
        else:
            self.stderr.write(f"timelinectl: {escape(message)}\n")
        return code

    @property
    def unicode(self) -> bool:
        encoding = (getattr(self.stdout, "encoding", None) or "").lower().replace("-", "")
        return encoding in ("utf8", "utf8sig")

    @property
    def width(self) -> int:
        return max(40, shutil.get_terminal_size((120, 24)).columns)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Columns sized to their content; the last column is cut to the terminal's width."""
        if not rows:
            self.note("(none)")
            return
        cells = [[_cell(v) for v in row] for row in rows]
        widths = [len(h) for h in headers]
        for row in cells:
            for i, cell in enumerate(row[:-1]):
                widths[i] = max(widths[i], len(cell))
        used = sum(w + 2 for w in widths[:-1])
        last = max(20, self.width - used)

        def fmt(row: Sequence[str]) -> str:
            head = "  ".join(c.ljust(widths[i]) for i, c in enumerate(row[:-1]))
            tail = _cut(row[-1], last)
            return f"{head}  {tail}".rstrip() if head else tail

        self.line(fmt(list(headers)))
        for row in cells:
            self.line(fmt(row))

    def fields(self, pairs: Sequence[tuple[str, Any]]) -> None:
        """`key  value` lines, keys aligned; None values are left out."""
        shown = [(k, v) for k, v in pairs if v is not None]
        if not shown:
            return
        width = max(len(k) for k, _ in shown)
        for key, value in shown:
            self.line(f"{key.ljust(width)}  {_cell(value)}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict | list):
        return escape(msgspec.json.encode(value).decode("utf-8"))
    return escape(str(value))


def _cut(text: str, width: int) -> str:
    text = escape(text)
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


# --- shared renderings -------------------------------------------------------------------------

MARKERS = {"active": "●", "paused": "‖", "merged": "✔", "archived": "✖"}
ASCII_MARKERS = {"active": "*", "paused": "=", "merged": "+", "archived": "x"}


def marker(out: Output, status: str) -> str:
    return (MARKERS if out.unicode else ASCII_MARKERS).get(status, "?")


def show_conversation(out: Output, c: Conversation) -> None:
    out.fields(
        [
            ("id", c.id),
            ("name", c.name),
            ("status", c.status),
            ("root context", c.root_context_id),
            ("created", c.created_at),
            ("updated", c.updated_at),
            ("metadata", c.metadata or None),
            ("archive reason", c.archive_reason),
            ("imported from", c.imported_from),
        ]
    )


def show_context(out: Output, c: Context) -> None:
    out.fields(
        [
            ("id", c.id),
            ("status", f"{marker(out, c.status)} {c.status}"),
            ("conversation", c.conversation_id),
            ("parent", c.parent_id or "(root)"),
            ("reason", c.reason or None),
            ("blocks", c.block_count),
            (
                "inherits",
                (
                    f"last {c.inherit_last} blocks of {c.inherit_from}"
                    if c.inherit_from and c.inherit_last
                    else None
                ),
            ),
            ("created", c.created_at),
            ("updated", c.updated_at),
            ("archive reason", c.archive_reason),
            ("tags", ", ".join(c.tags) if c.tags else None),
        ]
    )
    if c.crossrefs_omitted:
        out.line(escape(f"xref      too many for one reply: timelinectl xref list {c.id}"))
    for ref in c.crossrefs:
        direction = f"→ {ref.to_id}" if ref.from_id == c.id else f"← {ref.from_id}"
        note = f"  ({ref.note})" if ref.note else ""
        out.line(escape(f"xref      {ref.id}  {ref.kind} {direction}{note}"))


def render_tree(out: Output, contexts: Sequence[Context], focused: str | None) -> list[str]:
    """The contexts as an indented tree (children in creation order) with status markers."""
    children: dict[str | None, list[Context]] = {}
    ids = {c.id for c in contexts}
    for c in contexts:
        parent = c.parent_id if c.parent_id in ids else None
        children.setdefault(parent, []).append(c)
    branch, last, pipe, space = (
        ("├─ ", "└─ ", "│  ", "   ")
        if out.unicode
        else (
            "|- ",
            "`- ",
            "|  ",
            "   ",
        )
    )
    focus_mark = " ← focus" if out.unicode else " <- focus"
    lines: list[str] = []

    def label(c: Context) -> str:
        reason = f'  "{_cut(c.reason, 50)}"' if c.reason and c.parent_id else ""
        tags = f"  [{escape(', '.join(c.tags))}]" if c.tags else ""
        plural = "" if c.block_count == 1 else "s"
        mark = focus_mark if c.id == focused else ""
        return escape(
            f"{marker(out, c.status)} {c.id}  {c.status}  {c.block_count} block{plural}"
            f"{reason}{tags}{mark}"
        )

    def walk(node: Context, prefix: str, is_last: bool, top: bool) -> None:
        lines.append(label(node) if top else prefix + (last if is_last else branch) + label(node))
        kids = children.get(node.id, [])
        below = "" if top else prefix + (space if is_last else pipe)
        for i, kid in enumerate(kids):
            walk(kid, below, i == len(kids) - 1, False)

    for root in children.get(None, []):
        walk(root, "", True, True)
    return lines
