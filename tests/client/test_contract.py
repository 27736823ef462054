"""One suite for both clients: the hand-written AsyncClient and the generated blocking Client.

`ClientContract` holds the tests, written against the blocking interface; each concrete class
gives its client: `Client` itself, or `AsyncClient` run on an anyio event loop behind a portal
(tests/client/portal.py). A real daemon process serves both, once on each storage backend
(part of the contract suite: tests/stores.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from anyio.from_thread import start_blocking_portal

from tests.client.portal import PortalClient
from tests.conftest import Stores
from tests.daemon.harness import DaemonProcess, serving
from tests.stores import BACKENDS
from timelined import api
from timelined.api.exchange import join_parts
from timelined.client import (
    AsyncClient,
    Client,
    DaemonUnavailable,
    ExpectedMore,
    InterfaceNotFound,
    InvalidParameter,
    MethodNotFound,
    RemoteError,
    VarlinkServiceError,
    error_from_reply,
)
from timelined.commands import NewBlock
from timelined.errors import (
    BlockIdConflict,
    ContextNotFound,
    ConversationNotFound,
    InvalidArgument,
    InvalidTransition,
    LimitExceeded,
    TimelinedError,
)
from timelined.ids import new_id
from timelined.varlink.errors import VarlinkErrorReply

MAX_MESSAGE = 64 * 1024


@pytest.fixture(scope="module", params=BACKENDS)
def daemon(request: pytest.FixtureRequest, stores: Stores) -> Iterator[DaemonProcess]:
    with serving(
        **stores.new(request.param).overrides(),
        log={"fsync": "off"},
        limits={"max_message_bytes": MAX_MESSAGE},
    ) as proc:
        yield proc


class ClientContract:
    """What every client does, whichever way it is written."""

    @pytest.fixture
    def tl(self, daemon: DaemonProcess) -> Iterator[Any]:
        raise NotImplementedError

    def test_conversations_are_created_read_listed_updated_archived(self, tl: Any) -> None:
        conv = tl.create_conversation("contract", {"k": 1})
        assert conv.name == "contract" and conv.metadata == {"k": 1}
        assert tl.get_conversation(conv.id) == conv
        renamed = tl.update_conversation(conv.id, name="renamed")
        assert renamed.name == "renamed"
        listed = tl.list_conversations(limit=1000)
        assert conv.id in {c.id for c in listed.conversations}
        archived = tl.archive_conversation(conv.id, reason="done")
        assert archived.status == "archived"
        assert conv.id not in {c.id for c in tl.list_conversations(limit=1000).conversations}
        everything = tl.list_conversations(include_archived=True, limit=1000).conversations
        assert conv.id in {c.id for c in everything}

    def test_blocks_are_appended_and_read_back_in_history(self, tl: Any) -> None:
        conv = tl.create_conversation("blocks")
        root = conv.root_context_id
        first = tl.append_block(root, "user", "one", tokens_input=3, metadata={"m": [1]})
        tl.append_block(root, "assistant", "two", sub_blocks=[{"type": "thought", "content": "t"}])
        assert tl.get_block(first.block.id).content == "one"
        side = tl.spawn_sidebar(root, "dig", inherit_last=1)
        tl.append_block(side.id, "user", "three")
        history = tl.get_history(side.id)
        assert [h.block.content for h in history] == ["two", "three"]
        assert [h.source_context_id for h in history] == [root, side.id]
        page = tl.list_blocks(root, limit=1)
        assert [b.content for b in page.blocks] == ["one"] and page.next is not None
        rest = tl.list_blocks(root, after=page.next)
        assert [b.content for b in rest.blocks] == ["two"]
        assert tl.get_conversation_stats(conv.id).blocks == 3
        assert [c.id for c in tl.get_tree(conv.id)] == [root, side.id]

    def test_a_retried_append_with_its_id_is_idempotent_or_refused(self, tl: Any) -> None:
        root = tl.create_conversation("retry").root_context_id
        block_id = new_id("blk")
        once = tl.append_block(root, "user", "same", id=block_id)
        again = tl.append_block(root, "user", "same", id=block_id)
        assert again.block.id == once.block.id
        assert len(tl.get_history(root)) == 1
        with pytest.raises(BlockIdConflict):
            tl.append_block(root, "user", "different", id=block_id)

    def test_daemon_errors_arrive_as_their_classes_with_their_parameters(self, tl: Any) -> None:
        with pytest.raises(ContextNotFound) as missing:
            tl.get_context("ctx_nope")
        assert missing.value.params["id"] == "ctx_nope"
        assert missing.value.id == "ctx_nope"  # type: ignore[attr-defined]
        ctx = tl.create_conversation("errors").root_context_id
        tl.pause_context(ctx)
        with pytest.raises(InvalidTransition) as bad:
            tl.pause_context(ctx)
        assert bad.value.params["status"] == "paused"
        assert tl.resume_context(ctx).status == "active"
        with pytest.raises(ConversationNotFound):
            tl.get_conversation("conv_nope")

    def test_varlink_service_errors_arrive_as_their_classes(self, tl: Any) -> None:
        with pytest.raises(MethodNotFound) as nf:
            tl.call("io.timelined.Timeline.NoSuchMethod")
        assert isinstance(nf.value, VarlinkServiceError)
        with pytest.raises(InterfaceNotFound):
            tl.get_interface_description("io.example.Nothing")
        with pytest.raises(InvalidParameter) as bad:
            tl.call("io.timelined.Timeline.GetContext", {"id": 7})
        assert bad.value.parameter == "id"
        with pytest.raises(ExpectedMore):
            tl.call("io.timelined.Timeline.ExportConversation", {"id": "conv_x"})
        assert "io.timelined.Timeline" in tl.get_info().interfaces
        assert "method GetContext" in tl.get_interface_description("io.timelined.Timeline")

    def test_a_number_json_cannot_carry_is_refused_before_sending(self, tl: Any) -> None:
        root = tl.create_conversation("nan").root_context_id
        with pytest.raises(InvalidArgument):
            tl.append_block(root, "user", "x", time_taken=math.nan)
        with pytest.raises(InvalidArgument):
            tl.append_block(root, "user", "x", metadata={"deep": [math.inf]})
        assert tl.get_history(root) == []

    def test_export_streams_and_imports_back(self, tl: Any) -> None:
        conv = tl.create_conversation("export")
        for i in range(3):
            tl.append_block(conv.root_context_id, "user", f"b{i}")
        with pytest.raises(ConversationNotFound):
            tl.export_conversation("conv_nope")  # refused by the call, before any iteration
        parts = list(tl.export_conversation(conv.id))
        assert parts[0].header is not None and parts[-1].end is not None
        assert parts[-1].end.blocks == 3
        copy = tl.import_conversation(parts)
        again = tl.import_conversation(join_parts(parts))
        assert len({conv.id, copy.id, again.id}) == 3
        assert [b.content for b in tl.list_blocks(copy.root_context_id).blocks] == [
            "b0",
            "b1",
            "b2",
        ]

    def test_watch_delivers_the_log_then_live_events(self, tl: Any) -> None:
        conv = tl.create_conversation("watched")
        events = tl.watch(conversation_id=conv.id, after_seq=0)
        try:
            created = next(events)
            assert created.type == "conversation.created"
            assert created.data["conversation_id"] == conv.id
            tl.append_block(conv.root_context_id, "user", "live")  # after the subscription
            live = next(events)
            assert live.type == "block.appended" and live.seq > created.seq
        finally:
            events.close()
        with pytest.raises(ConversationNotFound):
            tl.watch(conversation_id="conv_nope")

    def test_stream_is_any_more_call_typed_or_raw(self, tl: Any) -> None:
        conv = tl.create_conversation("stream")
        method = "io.timelined.Timeline.ExportConversation"
        typed = list(tl.stream(method, {"id": conv.id}))
        assert typed[0].header.conversation.id == conv.id
        raw = list(tl.stream(method, {"id": conv.id}, msgspec.Raw))
        assert len(raw) == len(typed) and b'"header"' in bytes(raw[0])
        with pytest.raises(ConversationNotFound):
            list(tl.stream(method, {"id": "conv_nope"}))

    def test_an_error_the_server_hangs_up_after_leaves_the_client_usable(self, tl: Any) -> None:
        root = tl.create_conversation("hangup").root_context_id
        with pytest.raises(LimitExceeded):
            tl.append_block(root, "user", "x" * (2 * MAX_MESSAGE))
        for _ in range(3):  # the pool was renewed: no call meets the hung-up connection
            assert tl.get_context(root).id == root

    def test_an_abandoned_stream_leaves_the_pool_usable(self, tl: Any) -> None:
        conv = tl.create_conversation("abandoned")
        for i in range(3):
            tl.append_block(conv.root_context_id, "user", str(i))
        for _ in range(3):
            parts = tl.export_conversation(conv.id)
            next(parts)
            parts.close()  # midway: its connection must not go back to the pool
            assert tl.get_conversation(conv.id).id == conv.id
        assert list(tl.export_conversation(conv.id))[-1].end.blocks == 3

    def test_no_daemon_is_daemon_unavailable(self, tl: Any, daemon: DaemonProcess) -> None:
        other = self.open(daemon.base / "nobody.sock")
        try:
            with pytest.raises(DaemonUnavailable) as gone:
                other.get_status()
            assert "nobody.sock" in str(gone.value)
        finally:
            other.close()

    def open(self, socket: Any) -> Any:
        raise NotImplementedError

    def test_append_blocks_is_one_call_all_or_nothing(self, tl: Any) -> None:
        root = tl.create_conversation("a turn").root_context_id
        turn = [
            {"role": "user", "content": "q", "id": new_id("blk")},
            NewBlock("assistant", "a", id=new_id("blk"), tokens_output=2),
        ]
        stored = tl.append_blocks(root, turn)
        assert [(b.id, b.position, b.existed) for b in stored] == [
            (turn[0]["id"], 1, False),
            (turn[1].id, 2, False),
        ]
        again = tl.append_blocks(root, turn)  # a retry
        assert [(b.id, b.seq, b.existed) for b in again] == [(b.id, b.seq, True) for b in stored]
        with pytest.raises(InvalidArgument):  # refused before sending, as append_block's
            tl.append_blocks(root, [{"role": "user", "content": "x", "time_taken": math.nan}])
        with pytest.raises(InvalidArgument):
            tl.append_blocks(root, [NewBlock("user", "x", time_taken=math.inf)])
        listed = tl.list_blocks(root).blocks
        assert [(b.id, b.seq, b.role) for b in listed] == [
            (stored[0].id, stored[0].seq, "user"),
            (stored[1].id, stored[1].seq, "assistant"),
        ]

    def test_a_contexts_cross_references_come_a_page_at_a_time(self, tl: Any) -> None:
        root = tl.create_conversation("refs").root_context_id
        side = tl.spawn_sidebar(root, "side").id
        added = [tl.add_crossref(side, root, "see", note=f"n{i}") for i in range(5)]
        tl.revoke_crossref(added[1].id)
        live = [added[0], *added[2:]]
        first = tl.list_crossrefs(root, limit=2)
        assert isinstance(first, api.CrossRefsReply) and first.crossrefs == live[:2]
        rest = tl.list_crossrefs(root, after=first.next)
        assert rest.crossrefs == live[2:] and rest.next is None
        assert tl.list_crossrefs(side).crossrefs == tl.get_context(side).crossrefs == live
        assert not tl.get_context(side).crossrefs_omitted
        with pytest.raises(ContextNotFound):
            tl.list_crossrefs("ctx_" + "0" * 26)

    def test_every_declared_method_is_callable_through_the_generic_entry(self, tl: Any) -> None:
        """`invoke` (or `invoke_stream`) by the api's declaration reaches every method, typed:
        a method declared in timelined/api needs no client change to be called. Parameters are
        made from each method's own parameter Struct; a named refusal by the daemon counts as
        reached (the call was decoded and handled), a dispatch-level error does not."""
        for declared in (*api.TIMELINE_METHODS, *api.ADMIN_METHODS):
            params = _sample_params(tl, declared.method)
            try:
                try:
                    reply = tl.invoke(declared, params)
                except ExpectedMore:  # a streaming method: its first reply is enough
                    replies = tl.invoke_stream(declared, params)
                    reply = next(iter(replies))
                    replies.close()
            except (VarlinkServiceError, RemoteError) as exc:
                pytest.fail(f"{declared.full_name} was not reached: {exc!r}")
            except TimelinedError as exc:
                declared_errors = {e.name for i in api.INTERFACES for e in i.errors}
                assert exc.name in declared_errors, (declared.full_name, exc)
                continue
            assert isinstance(reply, declared.method.reply), declared.full_name


def _sample_params(tl: Any, method: Any) -> dict[str, Any]:
    """Every required parameter of `method`, with a value that names something real."""
    conv = tl.create_conversation("generic entry")
    ctx = conv.root_context_id
    block = tl.append_block(ctx, "user", "sample").block
    other = tl.spawn_sidebar(ctx, "other").id
    xref = tl.add_crossref(ctx, other, "see").id
    by_kind = {"Conversation": conv.id, "Context": ctx, "Focus": ctx, "Block": block.id}
    by_kind["CrossRef"] = xref
    samples: dict[str, Any] = {
        "conversation_id": conv.id,
        "context_id": ctx,
        "parent_id": ctx,
        "from_id": ctx,
        "to_id": other,
        "new_parent_id": other,
        "name": "n",
        "reason": "r",
        "role": "user",
        "content": "c",
        "query": "sample",
        "kind": "see",
        "tags": ["t"],
        "blocks": [{"role": "user", "content": "b"}],
        "document": join_parts(list(tl.export_conversation(conv.id))),
        "seq": block.seq,  # GetInclusionProof
        "old_size": 1,  # GetConsistencyProof
    }
    params: dict[str, Any] = {}
    for f in msgspec.structs.fields(method.parameters):
        if not f.required:
            continue
        if f.name == "id":
            kind = next((k for k in by_kind if k in method.name), "Context")
            params["id"] = by_kind[kind]
        else:
            params[f.name] = samples[f.name]
    return params


class TestClient(ClientContract):
    @pytest.fixture
    def tl(self, daemon: DaemonProcess) -> Iterator[Any]:
        with Client(daemon.socket_path, timeout=30) as client:
            yield client

    def open(self, socket: Any) -> Any:
        return Client(socket, timeout=5)


class TestAsyncClient(ClientContract):
    @pytest.fixture
    def tl(self, daemon: DaemonProcess) -> Iterator[Any]:
        with start_blocking_portal("asyncio") as portal:
            self.portal = portal
            client = PortalClient(portal, AsyncClient(daemon.socket_path))
            try:
                yield client
            finally:
                client.close()

    def open(self, socket: Any) -> Any:
        return PortalClient(self.portal, AsyncClient(socket))


def test_an_error_name_no_class_has_is_a_remote_error() -> None:
    exc = error_from_reply(VarlinkErrorReply("io.example.Odd", {"message": "m", "n": 1}))
    assert isinstance(exc, RemoteError) and isinstance(exc, TimelinedError)
    assert exc.error == "io.example.Odd" and exc.varlink_name == "io.example.Odd"
    assert str(exc) == "m" and exc.params["n"] == 1
