"""Verbs for blocks: append (one block, or --batch: many), retract, block, blocks, history,
search."""

from __future__ import annotations

import contextlib
import sys

import msgspec

from timelined.api.model import Block
from timelined.commands import MAX_BLOCKS_PER_CALL, NewBlock
from timelined.ctl.common import (
    EX_DATAERR,
    EX_NOINPUT,
    EX_USAGE,
    TIMELINE,
    Ctl,
    Verbs,
    count,
    json_array,
    json_object,
    positive,
)
from timelined.ctl.output import escape
from timelined.errors import LocalError


def register(verbs: Verbs) -> None:
    p = verbs.add_parser(
        "append",
        help="append a block to a context (content from stdin by default), or with --batch "
        "many blocks at once",
    )
    p.add_argument("context_id")
    p.add_argument("content", nargs="?", help="the block's content; '-' or absent: read stdin")
    p.add_argument(
        "--batch",
        metavar="FILE",
        help="append every block of FILE ('-': stdin) in one step, all or none: JSON Lines, one "
        "block a line, each AppendBlock's parameters but context_id, e.g. "
        '{"role": "user", "content": "hi", "id": "turn1-0"}',
    )
    p.add_argument("-r", "--role", help="user, assistant, system, … (default: user)")
    p.add_argument("--id", help="your own block id: a retry with the same id and content is safe")
    p.add_argument("--timestamp", help="ISO 8601 (default: now)")
    p.add_argument("--time-taken", type=float, metavar="SECONDS")
    p.add_argument("--tokens-input", type=count, metavar="N")
    p.add_argument("--tokens-output", type=count, metavar="N")
    p.add_argument("--metadata", type=json_object, metavar="JSON", help="a JSON object")
    p.add_argument("--sub-blocks", type=json_array, metavar="JSON", help="a JSON array")
    p.set_defaults(run=append)

    p = verbs.add_parser("block", help="show one block")
    p.add_argument("id")
    p.set_defaults(run=block)

    p = verbs.add_parser(
        "retract", help="hide a block from history, blocks and search (it stays in the log)"
    )
    p.add_argument("id")
    p.add_argument("--reason", help="why (recorded in the block.retracted event)")
    p.set_defaults(run=retract)

    p = verbs.add_parser("blocks", help="a context's own blocks, a page at a time")
    p.add_argument("context_id")
    p.add_argument("--after", type=count, metavar="POS", help="the page after this position")
    p.add_argument("--before", type=count, metavar="POS", help="the page before this position")
    p.add_argument("--limit", type=positive, help="at most N (1..1000, default 100)")
    p.add_argument("--role", action="append", dest="roles", metavar="ROLE", help="repeatable")
    p.add_argument("--since", metavar="TIME", help="at or after this ISO 8601 time")
    p.add_argument("--until", metavar="TIME", help="before this ISO 8601 time")
    p.add_argument(
        "--include-retracted", action="store_true", help="retracted blocks too (RetractBlock)"
    )
    p.set_defaults(run=blocks)

    p = verbs.add_parser("history", help="what a model is given for a context")
    p.add_argument("context_id")
    p.add_argument("--limit", type=positive, help="only the last N blocks")
    p.set_defaults(run=history)

    p = verbs.add_parser("search", help="full-text search over blocks (FTS5 query syntax)")
    p.add_argument("query")
    p.add_argument("--conversation", metavar="ID")
    p.add_argument("--context", metavar="ID")
    p.add_argument("--role")
    p.add_argument("--limit", type=positive, help="at most N (1..1000, default 20)")
    p.set_defaults(run=search)


# The options that describe one block: with --batch, each line of the file says them.
_ONE_BLOCK = ("content", "role", "id", "timestamp", "time_taken", "tokens_input", "tokens_output")
_ONE_BLOCK_JSON = ("metadata", "sub_blocks")


def append(ctl: Ctl) -> int:
    a = ctl.args
    if a.batch is not None:
        return append_batch(ctl)
    content = a.content
    if content is None or content == "-":
        if sys.stdin.isatty():  # a person at a terminal, not a pipe: say what is awaited
            ctl.out.note("timelinectl append: type the block's content, then Ctrl-D")
        content = sys.stdin.read()
        if not content:  # `append CTX < /dev/null`, or a pipe that produced nothing
            return ctl.out.fail(
                EX_USAGE,
                "UsageError",
                "append: no content: stdin was empty; give the content as an argument or "
                "pipe it in (an empty block must be asked for: append CTX '')",
            )
    reply = ctl.call(
        TIMELINE + "AppendBlock",
        context_id=a.context_id,
        role=a.role or "user",
        content=content,
        id=a.id,
        timestamp=a.timestamp,
        time_taken=a.time_taken,
        tokens_input=a.tokens_input,
        tokens_output=a.tokens_output,
        metadata=a.metadata,
        sub_blocks=a.sub_blocks,
    )
    b = reply.block
    ctl.out.reply(
        reply,
        lambda: ctl.out.line(f"{b.id}  seq {reply.seq}  position {b.position} in {b.context_id}"),
    )
    return 0


def append_batch(ctl: Ctl) -> int:
    a = ctl.args
    given = [name for name in (*_ONE_BLOCK, *_ONE_BLOCK_JSON) if getattr(a, name) is not None]
    if given:
        what = "the content" if given[0] == "content" else "--" + given[0].replace("_", "-")
        return ctl.out.fail(
            EX_USAGE,
            "UsageError",
            f"append --batch: {what} describes one block; with --batch each line of the file "
            "describes its block",
        )
    try:
        new_blocks = read_batch(a.batch)
    except BadBatch as exc:
        return ctl.out.fail(EX_DATAERR, "BadBatch", str(exc), file=exc.source, line=exc.line)
    except OSError as exc:
        return ctl.out.fail(
            EX_NOINPUT, "BadBatch", f"append --batch: cannot read {a.batch}: {exc.strerror}"
        )
    reply = ctl.call(TIMELINE + "AppendBlocks", context_id=a.context_id, blocks=new_blocks)
    ctl.out.reply(
        reply,
        lambda: ctl.out.lines(
            f"{b.id}  seq {b.seq}  position {b.position} in {a.context_id}"
            + ("  (stored before)" if b.existed else "")
            for b in reply.blocks
        ),
    )
    return 0


class BadBatch(LocalError):
    """A line of a --batch file that is not a block; names the file and the line."""

    name = "BadBatch"

    def __init__(self, source: str, line: int, problem: str) -> None:
        where = f"line {line}" if line else "the file"
        super().__init__(
            f"append --batch {source}: {where}: {problem}", file=source, line=line, problem=problem
        )
        self.source = source
        self.line = line


_NEW_BLOCK = msgspec.json.Decoder(NewBlock)


def read_batch(path: str) -> list[NewBlock]:
    """The blocks of a JSON Lines file ('-': stdin), blank lines skipped; BadBatch for the
    first line that is not a block. Reading stops past MAX_BLOCKS_PER_CALL blocks."""
    source = "(stdin)" if path == "-" else path
    blocks: list[NewBlock] = []
    with contextlib.nullcontext(sys.stdin.buffer) if path == "-" else open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if len(blocks) == MAX_BLOCKS_PER_CALL:
                raise BadBatch(
                    source,
                    number,
                    f"more than {MAX_BLOCKS_PER_CALL} blocks: one call appends at most "
                    f"{MAX_BLOCKS_PER_CALL}; split the file",
                )
            try:
                blocks.append(_NEW_BLOCK.decode(line))
            except msgspec.DecodeError as exc:  # ValidationError included
                raise BadBatch(source, number, _problem(exc)) from None
    if not blocks:
        raise BadBatch(source, 0, "no blocks (one JSON object a line)")
    return blocks


def _problem(exc: msgspec.DecodeError) -> str:
    text = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        return text.replace("`$.", "`").replace("`$`", "the line")
    return f"not JSON: {text}"


def show_block(ctl: Ctl, b: Block) -> None:
    out = ctl.out
    out.fields(
        [
            ("id", b.id),
            ("context", b.context_id),
            ("role", b.role),
            ("timestamp", b.timestamp),
            ("seq", b.seq),
            ("position", b.position),
            ("time taken", b.time_taken),
            ("tokens in", b.tokens_input),
            ("tokens out", b.tokens_output),
            ("metadata", b.metadata or None),
        ]
    )
    for sub in b.sub_blocks:
        out.line(escape(f"sub-block  {sub.type}: {sub.content}"))
    out.line("")
    out.line(b.content)


def block(ctl: Ctl) -> int:
    reply = ctl.call(TIMELINE + "GetBlock", id=ctl.args.id)
    ctl.out.reply(reply, lambda: show_block(ctl, reply.block))
    return 0


def retract(ctl: Ctl) -> int:
    reply = ctl.call(TIMELINE + "RetractBlock", id=ctl.args.id, reason=ctl.args.reason)
    b = reply.block
    ctl.out.reply(
        reply, lambda: ctl.out.line(f"retracted {b.id} (position {b.position} in {b.context_id})")
    )
    return 0


def blocks(ctl: Ctl) -> int:
    a = ctl.args
    reply = ctl.call(
        TIMELINE + "ListBlocks",
        context_id=a.context_id,
        after=a.after,
        before=a.before,
        limit=a.limit,
        roles=a.roles,
        since=a.since,
        until=a.until,
        include_retracted=a.include_retracted or None,
    )

    def human() -> None:
        ctl.out.table(
            ["POS", "SEQ", "ROLE", "TIMESTAMP", "CONTENT"],
            [[b.position, b.seq, b.role, b.timestamp[:23], b.content] for b in reply.blocks],
        )
        if reply.next is not None:
            way = "--before" if a.before is not None and a.after is None else "--after"
            ctl.more(way, reply.next)

    ctl.out.reply(reply, human)
    return 0


def history(ctl: Ctl) -> int:
    reply = ctl.call(TIMELINE + "GetHistory", context_id=ctl.args.context_id, limit=ctl.args.limit)

    def human() -> None:
        ctl.out.table(
            ["FROM", "HOW", "ROLE", "CONTENT"],
            [
                [
                    h.source_context_id,
                    "inherited" if h.inherited else "own",
                    h.block.role,
                    h.block.content,
                ]
                for h in reply.blocks
            ],
        )

    ctl.out.reply(reply, human)
    return 0


def search(ctl: Ctl) -> int:
    a = ctl.args
    reply = ctl.call(
        TIMELINE + "SearchBlocks",
        query=a.query,
        conversation_id=a.conversation,
        context_id=a.context,
        role=a.role,
        limit=a.limit,
    )

    def human() -> None:
        ctl.out.table(
            ["BLOCK", "CONTEXT", "ROLE", "SNIPPET"],
            [[h.block_id, h.context_id, h.role, h.snippet] for h in reply.hits],
        )

    ctl.out.reply(reply, human)
    return 0
