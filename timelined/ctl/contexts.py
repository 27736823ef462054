"""Verbs for the tree of contexts: tree, context, spawn, pause, resume, merge, archive, restore,
reparent, focus, startup, tags, xref."""

from __future__ import annotations

from timelined.api.timeline import ContextsReply
from timelined.ctl.common import TIMELINE, Ctl, Verbs, count, positive
from timelined.ctl.output import escape, render_tree, show_context, show_conversation


def register(verbs: Verbs) -> None:
    p = verbs.add_parser("tree", help="a conversation's tree of contexts, with status markers")
    p.add_argument(
        "id",
        nargs="?",
        help="a conversation id, or a context id of it (default: the focused conversation)",
    )
    p.set_defaults(run=tree)

    p = verbs.add_parser("context", help="show one context (tags and cross-references too)")
    p.add_argument("id")
    p.set_defaults(run=context)

    p = verbs.add_parser("spawn", help="spawn a sidebar from a context")
    p.add_argument("parent_id")
    p.add_argument("reason")
    p.add_argument(
        "--inherit-last", type=count, metavar="N", help="inherit the parent's last N blocks"
    )
    p.set_defaults(run=spawn)

    for verb, method, text in (
        ("pause", "PauseContext", "active -> paused"),
        ("resume", "ResumeContext", "paused -> active; takes focus"),
        ("restore", "RestoreContext", "archived -> paused"),
    ):
        p = verbs.add_parser(verb, help=text)
        p.add_argument("id")
        p.set_defaults(run=_simple, method=method)

    p = verbs.add_parser("merge", help="merge a sidebar into its parent")
    p.add_argument("id")
    p.add_argument("--summary", help="the summary appended to the parent")
    p.set_defaults(run=merge)

    p = verbs.add_parser("archive", help="archive a context")
    p.add_argument("id")
    p.add_argument("--reason")
    p.set_defaults(run=archive)

    p = verbs.add_parser("reparent", help="move a context (and its subtree) under another")
    p.add_argument("id")
    p.add_argument("new_parent_id")
    p.set_defaults(run=reparent)

    p = verbs.add_parser("focus", help="move the focus to a context")
    p.add_argument("id")
    p.set_defaults(run=focus)

    p = verbs.add_parser("startup", help="what a chat UI needs on start")
    p.set_defaults(run=startup)

    p = verbs.add_parser("tags", help="replace a context's tags")
    p.add_argument("id")
    p.add_argument("tags", nargs="*", metavar="TAG")
    p.add_argument("--clear", action="store_true", help="remove every tag")
    p.set_defaults(run=tags)

    p = verbs.add_parser("xref", help="cross-references between contexts")
    sub = p.add_subparsers(dest="xref_verb", required=True, metavar="{add,revoke,list}")
    q = sub.add_parser("add", help="add a cross-reference FROM -> TO")
    q.add_argument("from_id")
    q.add_argument("to_id")
    q.add_argument("kind", help="e.g. see-also, depends-on")
    q.add_argument("--note")
    q.set_defaults(run=xref_add)
    q = sub.add_parser("revoke", help="revoke a cross-reference")
    q.add_argument("id")
    q.set_defaults(run=xref_revoke)
    q = sub.add_parser("list", help="a context's cross-references, a page at a time")
    q.add_argument("context_id")
    q.add_argument("--after", type=count, metavar="SEQ", help="the page after this cursor")
    q.add_argument("--limit", type=positive, help="at most N (1..1000, default 100)")
    q.set_defaults(run=xref_list)


def _context_reply(ctl: Ctl, method: str, **params: object) -> int:
    reply = ctl.call(TIMELINE + method, **params)
    ctl.out.reply(reply, lambda: show_context(ctl.out, reply.context))
    return 0


def _simple(ctl: Ctl) -> int:
    return _context_reply(ctl, ctl.args.method, id=ctl.args.id)


def context(ctl: Ctl) -> int:
    return _context_reply(ctl, "GetContext", id=ctl.args.id)


def spawn(ctl: Ctl) -> int:
    a = ctl.args
    return _context_reply(
        ctl, "SpawnSidebar", parent_id=a.parent_id, reason=a.reason, inherit_last=a.inherit_last
    )


def merge(ctl: Ctl) -> int:
    return _context_reply(ctl, "MergeContext", id=ctl.args.id, summary=ctl.args.summary)


def archive(ctl: Ctl) -> int:
    return _context_reply(ctl, "ArchiveContext", id=ctl.args.id, reason=ctl.args.reason)


def reparent(ctl: Ctl) -> int:
    a = ctl.args
    return _context_reply(ctl, "ReparentContext", id=a.id, new_parent_id=a.new_parent_id)


def focus(ctl: Ctl) -> int:
    return _context_reply(ctl, "Focus", context_id=ctl.args.id)


def tags(ctl: Ctl) -> int:
    a = ctl.args
    if bool(a.tags) == a.clear:
        return ctl.out.fail(
            64, "UsageError", "tags: give tags, or --clear to remove them all (not both)"
        )
    return _context_reply(ctl, "SetTags", context_id=a.id, tags=[] if a.clear else a.tags)


def xref_add(ctl: Ctl) -> int:
    a = ctl.args
    reply = ctl.call(
        TIMELINE + "AddCrossRef", from_id=a.from_id, to_id=a.to_id, kind=a.kind, note=a.note
    )
    ref = reply.crossref
    ctl.out.reply(
        reply, lambda: ctl.out.line(escape(f"{ref.id}  {ref.from_id} -> {ref.to_id}  {ref.kind}"))
    )
    return 0


def xref_revoke(ctl: Ctl) -> int:
    reply = ctl.call(TIMELINE + "RevokeCrossRef", id=ctl.args.id)
    ctl.out.reply(reply, lambda: ctl.out.line(f"revoked {reply.crossref.id}"))
    return 0


def tree(ctl: Ctl) -> int:
    target = ctl.args.id
    startup = ctl.call(TIMELINE + "GetStartupState").state
    focused = startup.focused_context.id if startup.focused_context else None
    if target is None:
        conv = startup.focused_conversation or startup.last_active_conversation
        if conv is None:
            ctl.out.note("no conversations yet: timelinectl create NAME")
            return 1
        conversation_id = conv.id
    elif target.startswith("ctx_"):
        conversation_id = ctl.call(TIMELINE + "GetContext", id=target).context.conversation_id
    else:
        conversation_id = target
    reply = ctl.call(TIMELINE + "GetTree", conversation_id=conversation_id)
    contexts = list(reply.contexts)
    while reply.next is not None:  # a tree too large for one reply comes in pages
        reply = ctl.call(TIMELINE + "GetTree", conversation_id=conversation_id, after=reply.next)
        contexts.extend(reply.contexts)
    reply = ContextsReply(contexts)

    def human() -> None:
        conv = ctl.call(TIMELINE + "GetConversation", id=conversation_id).conversation
        status = "" if conv.status == "active" else f"  ({conv.status})"
        ctl.out.line(f'{conv.id}  "{escape(conv.name)}"{status}')
        ctl.out.lines(render_tree(ctl.out, reply.contexts, focused))

    ctl.out.reply(reply, human)
    return 0


def startup(ctl: Ctl) -> int:
    reply = ctl.call(TIMELINE + "GetStartupState")
    s = reply.state

    def human() -> None:
        out = ctl.out
        if not s.has_data:
            out.line("nothing stored yet: timelinectl create NAME")
            return
        if s.focused_context is not None:
            out.line("focused context:")
            show_context(out, s.focused_context)
        else:
            out.line("focused context: none")
        if s.focused_conversation is not None:
            out.line("")
            out.line("focused conversation:")
            show_conversation(out, s.focused_conversation)
        if s.last_active_conversation is not None:
            out.line("")
            out.line("last active conversation:")
            show_conversation(out, s.last_active_conversation)

    ctl.out.reply(reply, human)
    return 0


def xref_list(ctl: Ctl) -> int:
    a = ctl.args
    reply = ctl.call(
        TIMELINE + "ListCrossRefs", context_id=a.context_id, after=a.after, limit=a.limit
    )

    def human() -> None:
        ctl.out.table(
            ["ID", "FROM", "TO", "KIND", "CREATED", "NOTE"],
            [
                [r.id, r.from_id, r.to_id, r.kind, r.created_at, r.note or ""]
                for r in reply.crossrefs
            ],
        )
        if reply.next is not None:
            ctl.more("--after", reply.next)

    ctl.out.reply(reply, human)
    return 0
