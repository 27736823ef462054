"""Streaming verbs: watch, export, import.

- `watch` prints every event as it commits (the log past `--after-seq` first), one per line;
  with `--json`, the log's lines exactly. A watcher that falls behind is caught up from where it
  was. Ctrl-C ends it (exit 0).
- `export ID` writes the conversation as JSON lines, one export part per line, to stdout (not a
  terminal) or `-o FILE`; `import [FILE]` reads such a file (default stdin) and imports it. Both
  show their progress on stderr when it is a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from timelined.api import LogEvent, WatchReply
from timelined.api.exchange import ExportDocument, ExportHeader, ExportPart, with_contexts
from timelined.api.model import Context
from timelined.auditlog.atomic import AtomicFile
from timelined.auditlog.record import peek_seq
from timelined.client import log_event
from timelined.ctl.common import (
    EX_CANTCREAT,
    EX_DATAERR,
    EX_IOERR,
    EX_USAGE,
    TIMELINE,
    Ctl,
    Verbs,
    count,
)
from timelined.ctl.output import escape, show_conversation
from timelined.errors import LocalError, SlowConsumer


def register(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "watch",
        help="print events as they commit, one per line (the log past --after-seq first)",
        description="Print committed events as they happen: with --after-seq, first every event "
        "past that seq from the log. --json prints the log's lines exactly (JSON lines). "
        "Ctrl-C ends it.",
    )
    p.add_argument("--conversation", metavar="ID", help="only this conversation's events")
    p.add_argument("--after-seq", type=count, metavar="SEQ", help="catch up from the log first")
    p.set_defaults(run=watch)

    p = verbs.add_parser(
        "export",
        help="a conversation as JSON lines, one part per line: timelinectl export ID > FILE",
        description="Export a conversation with the audit events behind it, one part per line "
        "(header, contexts, events, blocks, proofs, end: docs/interfaces.md), for "
        "`timelinectl import` here or in another daemon, and for `verify-export`.",
    )
    p.add_argument("id", help="the conversation's id")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")
    p.set_defaults(run=export)

    p = verbs.add_parser(
        "import",
        help="import an export: timelinectl import [--mode new|keep] < FILE",
        description="Import a conversation exported by `timelinectl export`. The daemon checks "
        "every event's hash and that the events give exactly the tree and blocks of the "
        "document, and refuses an edited document with the reason.",
    )
    p.add_argument("file", nargs="?", help="the export (default: stdin)")
    p.add_argument(
        "--mode",
        choices=["new", "keep"],
        help="new ids (default) or the exported ids (refused when they exist here)",
    )
    p.set_defaults(run=import_)


# --- progress ----------------------------------------------------------------------------------


class _Progress:
    """One line on stderr, rewritten at most a few times a second; only on a terminal."""

    def __init__(self, ctl: Ctl) -> None:
        self.stream = ctl.out.stderr
        self.enabled = self.stream.isatty()
        self.last = 0.0
        self.width = 0

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        text = escape(text)
        self.stream.write("\r" + text.ljust(self.width))
        self.width = len(text)
        self.stream.flush()

    def done(self, text: str) -> None:
        if self.enabled:
            self.show(text, force=True)
            self.stream.write("\n")
            self.stream.flush()


# --- watch -------------------------------------------------------------------------------------


def _actor(actor: dict[str, Any] | str) -> str:
    if isinstance(actor, str):
        return actor
    return f"uid {actor.get('uid')} pid {actor.get('pid')}"


def describe(event: LogEvent) -> str:
    """An event in one line for people: seq, time, type, who, and what it concerns."""
    data = event.data
    if event.type == "block.appended" and isinstance(data.get("block"), dict):
        block = data["block"]
        what = f"{block.get('context_id')}  {block.get('role')}: {block.get('content', '')}"
    else:
        what = "  ".join(
            f"{k}={v}" for k, v in data.items() if isinstance(v, str | int | float) and v != ""
        )
    text = f"{event.seq:>7}  {event.ts}  {event.type:<22}  {_actor(event.actor)}  {what}"
    return escape(text)


def watch(ctl: Ctl) -> int:
    a = ctl.args
    after: int | None = a.after_seq
    out = ctl.out
    width = ctl.out.width if out.stdout.isatty() else None
    try:
        while True:
            params: dict[str, Any] = {"conversation_id": a.conversation, "after_seq": after}
            replies: Iterator[WatchReply] = ctl.client.stream(
                TIMELINE + "Watch", {k: v for k, v in params.items() if v is not None}
            )
            try:
                for reply in replies:
                    for raw in reply.events:
                        if ctl.out.json:
                            line = bytes(raw)
                            out.write(line.decode("utf-8") + "\n")
                            after = peek_seq(line)
                        else:
                            event = log_event(raw)
                            text = describe(event)
                            if width is not None and len(text) > width:
                                text = text[: width - 1] + "…"
                            out.write(text + "\n")
                            after = event.seq
                    out.flush()
            except SlowConsumer as exc:
                where = f"from seq {after}" if after is not None else "from now (nothing seen)"
                ctl.out.note(f"timelinectl: {exc.message}; catching up {where}")
                continue
    except KeyboardInterrupt:
        return 0


# --- export ------------------------------------------------------------------------------------


class _Counted(msgspec.Struct):
    """What the progress line needs of a part (the rest stays undecoded)."""

    header: ExportHeader | None = None
    contexts: list[Context] | None = None
    events: list[msgspec.Raw] | None = None
    blocks: list[msgspec.Raw] | None = None


def export(ctl: Ctl) -> int:
    a = ctl.args
    if a.output is None and ctl.out.stdout.isatty():
        return ctl.out.fail(
            EX_USAGE,
            "UsageError",
            "an export is JSON lines for a file: redirect it (timelinectl export ID > FILE) "
            "or use -o FILE",
        )
    if a.output is not None and Path(a.output).is_dir():
        return ctl.out.fail(
            EX_CANTCREAT,
            "CannotWrite",
            f"cannot write {a.output}: it is a directory",
            path=a.output,
        )
    replies: Iterator[msgspec.Raw] = ctl.client.stream(
        TIMELINE + "ExportConversation", {"id": a.id}, msgspec.Raw
    )
    progress = _Progress(ctl)
    if a.output is None:
        _write_parts(lambda line: ctl.out.write(line.decode("utf-8")), replies, progress, a.id)
        ctl.out.flush()
        return 0
    target = Path(a.output)
    partial = target.with_name(target.name + ".partial")
    try:
        out = AtomicFile(target, mode=0o666, tmp=partial)
    except OSError as exc:
        return ctl.out.fail(
            EX_CANTCREAT,
            "CannotWrite",
            f"cannot write {partial}: {exc.strerror}",
            path=str(partial),
        )
    try:
        with out:  # leaving it any other way than by commit removes the partial file
            buffered = _Buffered(out.write)
            _write_parts(buffered.write, replies, progress, a.id)
            buffered.flush()
            out.commit()  # only a complete export takes the name
    except OSError as exc:
        where = str(exc.filename or partial)
        return ctl.out.fail(
            EX_IOERR, "CannotWrite", f"cannot write {where}: {exc.strerror or exc}", path=where
        )
    if ctl.out.json:  # stdout is free: the export went to the file
        ctl.out.print_json({"written": str(target), "bytes": target.stat().st_size})
    return 0


class _Buffered:
    """Lines gathered into large writes (an export is many small parts)."""

    def __init__(self, sink: Callable[[bytes], None], size: int = 1 << 16) -> None:
        self._sink, self._size = sink, size
        self._buffer = bytearray()

    def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= self._size:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._sink(bytes(self._buffer))
            self._buffer.clear()


def _write_parts(
    write: Callable[[bytes], object], replies: Iterable[msgspec.Raw], progress: _Progress, id: str
) -> None:
    events = blocks = total = 0
    decoder = msgspec.json.Decoder(_Counted)
    for raw in replies:
        write(bytes(raw) + b"\n")
        if progress.enabled:
            part = decoder.decode(raw)
            if part.header is not None:
                total = sum(c.block_count for c in part.header.contexts)
            total += sum(c.block_count for c in part.contexts or ())
            events += len(part.events or ())
            blocks += len(part.blocks or ())
            progress.show(f"exporting {id}: {events} events, {blocks}/{total} blocks")
    progress.done(f"exported {id}: {events} events, {blocks} blocks")


# --- import ------------------------------------------------------------------------------------


class BadExport(LocalError):
    """An export file to import that is not one (which line, or what is missing)."""

    name = "BadExport"


def read_export(lines: Iterable[str], progress: _Progress | None = None) -> ExportDocument:
    """An export file's parts joined; BadExport says which line is wrong or what is missing."""
    decoder = msgspec.json.Decoder(ExportPart)
    header: ExportHeader | None = None
    contexts: list[Context] = []
    events: list[str] = []
    blocks: list[Any] = []
    end = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if end is not None:
            raise BadExport(f"line {number}: a part after the end part")
        try:
            part = decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise BadExport(f"line {number}: not an export part: {exc}") from None
        if part.header is not None:
            if header is not None:
                raise BadExport(f"line {number}: a second header")
            header = part.header
        elif header is None:
            raise BadExport(f"line {number}: the first part must be the header")
        contexts.extend(part.contexts or ())
        events.extend(part.events or ())
        blocks.extend(part.blocks or ())
        end = part.end
        if progress is not None:
            progress.show(f"reading: {len(events)} events, {len(blocks)} blocks")
    if header is None:
        raise BadExport("no header: this is not an export (or it is empty)")
    if end is None:
        raise BadExport("no end part: the export is incomplete (cut off?)")
    if (end.events, end.blocks) != (len(events), len(blocks)):
        raise BadExport(
            f"the end part counts {end.events} events and {end.blocks} blocks, the file holds "
            f"{len(events)} and {len(blocks)}"
        )
    return ExportDocument(header=with_contexts(header, contexts), events=events, blocks=blocks)


def import_(ctl: Ctl) -> int:
    a = ctl.args
    progress = _Progress(ctl)
    if a.file is None and sys.stdin.isatty():
        return ctl.out.fail(
            EX_USAGE,
            "UsageError",
            "reading an export from the terminal: give a FILE or redirect "
            "(timelinectl import < FILE)",
        )
    try:
        if a.file is None:
            document = read_export(sys.stdin, progress)
        else:
            with open(a.file, encoding="utf-8") as handle:
                document = read_export(handle, progress)
    except OSError as exc:
        return ctl.out.fail(
            66, "CannotRead", f"cannot read {a.file}: {exc.strerror}", path=a.file
        )  # 66: EX_NOINPUT
    except (BadExport, UnicodeDecodeError) as exc:
        if progress.width:
            ctl.out.stderr.write("\n")
        return ctl.out.fail(EX_DATAERR, "BadExport", f"bad export: {exc}")
    progress.done(
        f"read {len(document.events)} events, {len(document.blocks)} blocks; "
        "the daemon verifies and imports them"
    )
    reply = ctl.call(TIMELINE + "ImportConversation", document=document, mode=a.mode)
    ctl.out.reply(reply, lambda: show_conversation(ctl.out, reply.conversation))
    return 0
