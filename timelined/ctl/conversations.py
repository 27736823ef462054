"""Verbs for conversations: conversations, conversation, create, rename, update,
archive-conversation, stats."""

from __future__ import annotations

from timelined.ctl.common import TIMELINE, Ctl, Verbs, count, json_object, positive
from timelined.ctl.output import show_conversation


def register(verbs: Verbs) -> None:
    p = verbs.add_parser("conversations", help="list conversations (a page at a time)")
    p.add_argument("-a", "--all", action="store_true", help="include archived conversations")
    p.add_argument("--limit", type=positive, help="at most N (1..1000, default 100)")
    p.add_argument("--after", type=count, metavar="CURSOR", help="the page after this cursor")
    p.add_argument("--name", help="only the conversations of exactly this name")
    p.set_defaults(run=conversations)

    p = verbs.add_parser("conversation", help="show one conversation")
    p.add_argument("id")
    p.set_defaults(run=conversation)

    p = verbs.add_parser("create", help="create a conversation (and its root context)")
    p.add_argument("name")
    p.add_argument("--metadata", type=json_object, metavar="JSON", help="a JSON object")
    p.set_defaults(run=create)

    p = verbs.add_parser("rename", help="rename a conversation")
    p.add_argument("id")
    p.add_argument("name")
    p.set_defaults(run=rename)

    p = verbs.add_parser("update", help="rename a conversation and/or replace its metadata")
    p.add_argument("id")
    p.add_argument("--name")
    p.add_argument("--metadata", type=json_object, metavar="JSON", help="a JSON object")
    p.set_defaults(run=update)

    p = verbs.add_parser("archive-conversation", help="archive a conversation (read-only)")
    p.add_argument("id")
    p.add_argument("--reason")
    p.set_defaults(run=archive_conversation)

    p = verbs.add_parser("stats", help="a conversation's statistics")
    p.add_argument("id")
    p.set_defaults(run=stats)


def conversations(ctl: Ctl) -> int:
    a = ctl.args
    reply = ctl.call(
        TIMELINE + "ListConversations",
        include_archived=a.all or None,
        name=a.name,
        limit=a.limit,
        after=a.after,
    )

    def human() -> None:
        ctl.out.table(
            ["ID", "STATUS", "CREATED", "ROOT CONTEXT", "NAME"],
            [
                [c.id, c.status, c.created_at[:19], c.root_context_id, c.name]
                for c in reply.conversations
            ],
        )
        if reply.next is not None:
            ctl.more("--after", reply.next)

    ctl.out.reply(reply, human)
    return 0


def _one(ctl: Ctl, method: str, **params: object) -> int:
    reply = ctl.call(TIMELINE + method, **params)
    ctl.out.reply(reply, lambda: show_conversation(ctl.out, reply.conversation))
    return 0


def conversation(ctl: Ctl) -> int:
    return _one(ctl, "GetConversation", id=ctl.args.id)


def create(ctl: Ctl) -> int:
    return _one(ctl, "CreateConversation", name=ctl.args.name, metadata=ctl.args.metadata)


def rename(ctl: Ctl) -> int:
    return _one(ctl, "UpdateConversation", id=ctl.args.id, name=ctl.args.name)


def update(ctl: Ctl) -> int:
    a = ctl.args
    if a.name is None and a.metadata is None:
        return ctl.out.fail(64, "UsageError", "update: give --name and/or --metadata")
    return _one(ctl, "UpdateConversation", id=a.id, name=a.name, metadata=a.metadata)


def archive_conversation(ctl: Ctl) -> int:
    return _one(ctl, "ArchiveConversation", id=ctl.args.id, reason=ctl.args.reason)


def stats(ctl: Ctl) -> int:
    reply = ctl.call(TIMELINE + "GetConversationStats", id=ctl.args.id)
    s = reply.stats

    def human() -> None:
        out = ctl.out
        out.fields(
            [
                ("conversation", s.conversation_id),
                ("blocks", s.blocks),
                ("tokens in", s.tokens_input),
                ("tokens out", s.tokens_output),
                ("time taken", f"{s.time_taken:.3f} s"),
            ]
        )
        if s.blocks_per_role:
            out.line("blocks per role:")
            out.lines(f"  {role:<12} {n}" for role, n in s.blocks_per_role.items())
        if s.contexts_per_status:
            out.line("contexts per status:")
            out.lines(f"  {status:<12} {n}" for status, n in s.contexts_per_status.items())

    ctl.out.reply(reply, human)
    return 0
