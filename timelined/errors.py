"""The one error root of timelined and its named subclasses.

Every refusal a client or operator can meet is a subclass of `TimelinedError`. Each class has:

- `name`: the last part of its Varlink error name, stable across releases. The full name is
  qualified by the interface that declares it (`io.timelined.Timeline.ContextNotFound`), as the
  Varlink spec requires: an error declared by both interfaces is sent under the interface of the
  method that was called (the daemon's error mapper, `timelined.daemon.varlink_setup`);
- `home_interface`: the interface it is named by outside a call (a frame that is not a call, a
  connection over `max_connections`) and wherever no call names it (tools that meet it locally,
  `timelined check-config`); `io.timelined.Timeline` unless only `io.timelined.Admin` declares
  it (`timelined.api.errors` says which interface declares which error);
- `recoverable`: whether the same call may succeed later without an operator (a full disk that
  empties, a daemon that restarts) — litestream's habit of saying so in every error;
- `params`: the JSON-ready parameters that say what was wrong (sent as the Varlink error's
  parameters), always including `message`;
- `Params`: the Struct those parameters follow, declared once here: the interface files'
  `error` lines are built from it (`timelined.api.errors`), with `doc` as their comment.

Every named error lives in this module, so a client that imports only `timelined.client` knows
every `io.timelined.<Interface>.<Name>` it may receive. The errors no interface declares, met
only where they are raised (a line that is not a record, a bad input file of timelinectl),
are `LocalError`s and live beside what raises them: they are never sent under their own name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec

JSONValue = Any  # a value msgspec can encode; errors carry small scalars and lists

TIMELINE_INTERFACE = "io.timelined.Timeline"
ADMIN_INTERFACE = "io.timelined.Admin"


class ErrorParams(msgspec.Struct, frozen=True):
    """The parameters every named error carries; each error's `Params` adds its own."""

    message: str


class TimelinedError(Exception):
    """Root of every error timelined raises on purpose."""

    name: ClassVar[str] = "Error"
    home_interface: ClassVar[str] = TIMELINE_INTERFACE
    recoverable: ClassVar[bool] = False
    doc: ClassVar[str] = ""  # what the interface files say of it
    Params: ClassVar[type[ErrorParams]] = ErrorParams
    # The full name an error reply arrived under (set by the client that decoded it), so that
    # it is shown as it was sent.
    received_as: str | None = None

    def __init__(self, message: str, **params: JSONValue) -> None:
        super().__init__(message)
        self.message = message
        self.params: Mapping[str, JSONValue] = {**params, "message": message}

    @property
    def varlink_name(self) -> str:
        """The full Varlink name: as it arrived, else under the home interface."""
        return self.received_as or f"{self.home_interface}.{self.name}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


# --- configuration -----------------------------------------------------------------------------


class ConfigError(TimelinedError):
    """config.toml has an unknown key or a bad value; `key` names it (dotted, e.g. log.fsync)."""

    name = "ConfigError"
    home_interface = ADMIN_INTERFACE
    doc = "The configuration file was refused; `key` names the offending key."

    class Params(ErrorParams, frozen=True):
        key: str
        problem: str
        path: str | None

    def __init__(self, key: str, problem: str, path: str | None = None) -> None:
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{key}: {problem}", key=key, problem=problem, path=path)
        self.key = key


# --- not found ---------------------------------------------------------------------------------


class _IdParams(ErrorParams, frozen=True):
    id: str


class ConversationNotFound(TimelinedError):
    name = "ConversationNotFound"
    doc = "No conversation with this id."
    Params = _IdParams

    def __init__(self, id: str) -> None:
        super().__init__(f"no conversation with id {id!r}", id=id)


class ContextNotFound(TimelinedError):
    name = "ContextNotFound"
    doc = "No context with this id."
    Params = _IdParams

    def __init__(self, id: str) -> None:
        super().__init__(f"no context with id {id!r}", id=id)


class BlockNotFound(TimelinedError):
    name = "BlockNotFound"
    doc = "No block with this id."
    Params = _IdParams

    def __init__(self, id: str) -> None:
        super().__init__(f"no block with id {id!r}", id=id)


class CrossRefNotFound(TimelinedError):
    name = "CrossRefNotFound"
    doc = "No live (unrevoked) cross-reference with this id."
    Params = _IdParams

    def __init__(self, id: str) -> None:
        super().__init__(f"no live cross-reference with id {id!r}", id=id)


class ReportNotFound(TimelinedError):
    name = "ReportNotFound"
    home_interface = ADMIN_INTERFACE
    doc = "No report with this id."
    Params = _IdParams

    def __init__(self, id: str) -> None:
        super().__init__(f"no report with id {id!r}", id=id)


# --- refused by the rules ----------------------------------------------------------------------


class InvalidTransition(TimelinedError):
    """An action that the context's (or conversation's) current status does not allow."""

    name = "InvalidTransition"
    doc = "The current status of the context (or conversation) does not allow the action."

    class Params(ErrorParams, frozen=True):
        id: str
        status: str
        action: str
        reason: str | None

    def __init__(self, id: str, status: str, action: str, reason: str | None = None) -> None:
        why = f": {reason}" if reason else ""
        super().__init__(
            f"cannot {action} {id!r} while it is {status}{why}",
            id=id,
            status=status,
            action=action,
            reason=reason,
        )


class CycleError(TimelinedError):
    name = "CycleError"
    doc = "A context cannot move under itself or its descendants."

    class Params(ErrorParams, frozen=True):
        id: str
        new_parent_id: str

    def __init__(self, id: str, new_parent_id: str) -> None:
        super().__init__(
            f"cannot move {id!r} under {new_parent_id!r}: it is the context itself or one of its "
            "descendants",
            id=id,
            new_parent_id=new_parent_id,
        )


class CrossConversationMove(TimelinedError):
    name = "CrossConversationMove"
    doc = "Contexts do not cross conversations."

    class Params(ErrorParams, frozen=True):
        id: str
        conversation_id: str
        new_parent_id: str
        target_conversation_id: str

    def __init__(self, id: str, conversation_id: str, new_parent_id: str, target: str) -> None:
        super().__init__(
            f"cannot move {id!r} (conversation {conversation_id!r}) under {new_parent_id!r} "
            f"(conversation {target!r}): contexts do not cross conversations",
            id=id,
            conversation_id=conversation_id,
            new_parent_id=new_parent_id,
            target_conversation_id=target,
        )


class BlockIdConflict(TimelinedError):
    name = "BlockIdConflict"
    doc = "A block with this id exists with other content (the same content is a safe retry)."

    class Params(ErrorParams, frozen=True):
        id: str
        context_id: str

    def __init__(self, id: str, context_id: str) -> None:
        super().__init__(
            f"block id {id!r} already exists (in context {context_id!r}) with other content",
            id=id,
            context_id=context_id,
        )


class LimitExceeded(TimelinedError):
    name = "LimitExceeded"
    doc = "A configured limit (max_block_bytes, max_message_bytes, max_connections) was exceeded."

    class Params(ErrorParams, frozen=True):
        limit: str
        size: int
        maximum: int

    def __init__(self, limit: str, size: int, maximum: int) -> None:
        super().__init__(
            f"{limit} exceeded: {size} > {maximum}", limit=limit, size=size, maximum=maximum
        )


class InvalidArgument(TimelinedError):
    """A parameter that has the right type but a value the engine refuses."""

    name = "InvalidArgument"
    doc = "A parameter of the right type with a value that is refused."

    class Params(ErrorParams, frozen=True):
        parameter: str
        reason: str

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(f"{parameter}: {reason}", parameter=parameter, reason=reason)


class BadQuery(TimelinedError):
    name = "BadQuery"
    doc = "A malformed FTS5 search query."

    class Params(ErrorParams, frozen=True):
        query: str
        reason: str

    def __init__(self, query: str, reason: str) -> None:
        super().__init__(f"bad search query {query!r}: {reason}", query=query, reason=reason)


class ImportRejected(TimelinedError):
    name = "ImportRejected"
    doc = "An import document was refused."

    class Params(ErrorParams, frozen=True):
        reason: str
        seq: int | None

    def __init__(self, reason: str, seq: int | None = None) -> None:
        super().__init__(f"import refused: {reason}", reason=reason, seq=seq)


# --- access ------------------------------------------------------------------------------------


class PermissionDenied(TimelinedError):
    name = "PermissionDenied"
    doc = "The caller's uid/gid may not call this method; the connection is closed after it."

    class Params(ErrorParams, frozen=True):
        uid: int
        gid: int
        method: str
        reason: str

    def __init__(self, uid: int, gid: int, method: str, reason: str) -> None:
        super().__init__(
            f"uid {uid} gid {gid} may not call {method}: {reason}",
            uid=uid,
            gid=gid,
            method=method,
            reason=reason,
        )


# --- storage -----------------------------------------------------------------------------------


class LogDamaged(TimelinedError):
    """The log is damaged before its tail: the daemon serves reads and refuses every write."""

    name = "LogDamaged"
    doc = "The audit log is damaged before its tail: reads are served, writes refused."

    class Params(ErrorParams, frozen=True):
        seq: int | None
        reason: str
        segment: str | None

    def __init__(self, seq: int | None, reason: str, segment: str | None = None) -> None:
        at = f" at seq {seq}" if seq is not None else ""
        super().__init__(
            f"the audit log is damaged{at}: {reason}; writes are refused until an operator "
            "acts (see docs/recovery.md)",
            seq=seq,
            reason=reason,
            segment=segment,
        )


class DiskFull(TimelinedError):
    """A write hit ENOSPC; the batch was refused and the log truncated back to where it was."""

    name = "DiskFull"
    recoverable = True
    doc = "No space left; the write was refused and nothing of it kept."

    class Params(ErrorParams, frozen=True):
        path: str

    def __init__(self, path: str) -> None:
        super().__init__(
            f"no space left on the device holding {path}; the write was refused and nothing of "
            "it was kept; free space and retry",
            path=path,
        )


class StorageError(TimelinedError):
    """An I/O error on a write that was refused cleanly (not fsync: that one is fatal)."""

    name = "StorageError"
    recoverable = True
    doc = "An I/O error; the write was refused."

    class Params(ErrorParams, frozen=True):
        path: str
        errno: int

    def __init__(self, path: str, errno: int, strerror: str) -> None:
        super().__init__(
            f"I/O error on {path}: {strerror} (errno {errno}); the write was refused",
            path=path,
            errno=errno,
        )


class FatalStorageError(TimelinedError):
    """fsync failed: the page cache may have dropped our data, so the only safe move is to stop.

    PostgreSQL's lesson of 2018: retrying fsync can report success for data that is gone. The
    daemon acknowledges nothing of the batch, exits non-zero, and recovery replays the log.
    """

    name = "FatalStorageError"
    doc = (
        "fsync (or the state's commit) failed: the daemon stops and recovery replays the log at"
        " its next start."
    )

    class Params(StorageError.Params, frozen=True):
        operation: str

    def __init__(self, path: str, errno: int, strerror: str, operation: str = "fsync") -> None:
        super().__init__(
            f"{operation} of {path} failed: {strerror} (errno {errno}); the daemon stops so "
            "that recovery can run from the log",
            path=path,
            errno=errno,
            operation=operation,
        )


class ShuttingDown(TimelinedError):
    name = "ShuttingDown"
    recoverable = True
    doc = "The daemon is stopping; retry after it restarts."

    def __init__(self) -> None:
        super().__init__("the daemon is shutting down; retry after it restarts")


class StateLocked(TimelinedError):
    """Another daemon holds STATE_DIR/lock."""

    name = "StateLocked"
    home_interface = ADMIN_INTERFACE
    doc = "Never sent on the socket: a second daemon refused to start on a locked state."

    class Params(ErrorParams, frozen=True):
        path: str
        pid: int | None

    def __init__(self, path: str, pid: int | None) -> None:
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            f"{path} is locked by {holder}: another timelined already serves this state directory",
            path=path,
            pid=pid,
        )


class BootFailed(TimelinedError):
    """The boot could not complete; its report (when one could be written) says why."""

    name = "BootFailed"
    home_interface = ADMIN_INTERFACE
    doc = "Never sent on the socket: the boot could not complete and the daemon did not start."

    class Params(ErrorParams, frozen=True):
        reason: str
        report: str | None

    def __init__(self, reason: str, report_path: str | None) -> None:
        super().__init__(
            f"boot failed: {reason}" + (f" (report: {report_path})" if report_path else ""),
            reason=reason,
            report=report_path,
        )


class SlowConsumer(TimelinedError):
    name = "SlowConsumer"
    recoverable = True
    doc = "A watcher fell too far behind and was disconnected."

    class Params(ErrorParams, frozen=True):
        buffered: int

    def __init__(self, buffered: int) -> None:
        super().__init__(
            f"the watcher fell {buffered} events behind and was disconnected; reconnect with "
            "after_seq to catch up",
            buffered=buffered,
        )


class BackupFailed(TimelinedError):
    """`timelined backup` made no backup; `side` says whose fault: "source" (not a state
    directory), "destination" (cannot be created, or not empty) or "copy" (reading, writing or
    checking the copy failed). Nothing usable is left at the destination."""

    name = "BackupFailed"
    home_interface = ADMIN_INTERFACE
    doc = (
        "Never sent on the socket: `timelined backup` made no backup; `side` is source, "
        "destination or copy."
    )

    class Params(ErrorParams, frozen=True):
        side: str
        path: str

    def __init__(self, side: str, problem: str, path: str) -> None:
        super().__init__(problem, side=side, path=path)
        self.side = side


class MigrationFailed(TimelinedError):
    """`timelined migrate` committed nothing; `side` says whose fault: "source" (not a stopped
    daemon's state directory), "target" (cannot connect, or not empty), "copy" (the server, the
    connection or a read of the log failed midway), "verify" (the migrated database did not
    verify before the commit). The target is left as it was."""

    name = "MigrationFailed"
    home_interface = ADMIN_INTERFACE
    doc = (
        "Never sent on the socket: `timelined migrate` committed nothing; `side` is source, "
        "target, copy or verify."
    )

    class Params(ErrorParams, frozen=True):
        side: str
        where: str  # the source directory, or the target's conninfo without its secrets

    def __init__(self, side: str, problem: str, where: str) -> None:
        super().__init__(problem, side=side, where=where)
        self.side = side


class DaemonUnavailable(TimelinedError):
    """The client could not reach the daemon (no socket, refused, closed mid-call)."""

    name = "DaemonUnavailable"
    home_interface = ADMIN_INTERFACE
    recoverable = True
    doc = "Never sent on the socket: the client library's error when the daemon is unreachable."

    class Params(ErrorParams, frozen=True):
        socket_path: str
        reason: str

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(
            f"cannot reach timelined at {socket_path}: {reason}",
            socket_path=socket_path,
            reason=reason,
        )


class FeatureUnavailable(TimelinedError):
    """A method whose part of the daemon is not running (e.g. no verifier in this build)."""

    name = "FeatureUnavailable"
    home_interface = ADMIN_INTERFACE
    doc = "The part of the daemon this method needs is not running."

    class Params(ErrorParams, frozen=True):
        feature: str
        reason: str

    def __init__(self, feature: str, reason: str) -> None:
        super().__init__(f"{feature} is not available: {reason}", feature=feature, reason=reason)


class InternalError(TimelinedError):
    """A bug: something failed that is not a named refusal. Nothing of the call was applied."""

    name = "InternalError"
    doc = "A bug: the call failed unexpectedly and left no trace; the daemon's log has details."

    class Params(ErrorParams, frozen=True):
        detail: str | None = None
        exception: str | None = None  # the server's own form names the exception's type

    def __init__(self, detail: str) -> None:
        super().__init__(f"internal error, nothing was applied: {detail}", detail=detail)


class ProtocolError(TimelinedError):
    """A reply from the daemon that does not follow the Varlink protocol."""

    name = "ProtocolError"
    doc = "A frame that is not a Varlink call; the connection is closed after it."

    class Params(ErrorParams, frozen=True):
        reason: str

    def __init__(self, reason: str) -> None:
        super().__init__(f"protocol error: {reason}", reason=reason)


# --- verifiable history (issue 19) ----------------------------------------------------------


class CheckpointInvalid(TimelinedError):
    """A checkpoint or proof that does not verify: a bad signature, a key other than the one
    trusted, a malformed note, or an inclusion proof that does not lead to the checkpoint."""

    name = "CheckpointInvalid"
    home_interface = ADMIN_INTERFACE  # met by the client auditing Admin's checkpoints
    doc = "A checkpoint or proof that does not verify (signature, key, format or proof)."

    class Params(ErrorParams, frozen=True):
        reason: str

    def __init__(self, reason: str) -> None:
        super().__init__(f"checkpoint does not verify: {reason}", reason=reason)


class HistoryRewritten(TimelinedError):
    """A correctly signed checkpoint that does not extend the one remembered: the log was
    rewritten, truncated or forked since (docs/transparency.md)."""

    name = "HistoryRewritten"
    home_interface = ADMIN_INTERFACE  # met by the client auditing Admin's checkpoints
    doc = "A signed checkpoint that does not extend the one remembered: the log's past changed."

    class Params(ErrorParams, frozen=True):
        old_size: int
        new_size: int
        reason: str

    def __init__(self, old_size: int, new_size: int, reason: str) -> None:
        super().__init__(
            f"the log's history changed: the checkpoint at size {new_size} does not extend the "
            f"remembered one at size {old_size} ({reason})",
            old_size=old_size,
            new_size=new_size,
            reason=reason,
        )


# --- met where they are raised ----------------------------------------------------------------


class LocalError(TimelinedError):
    """An error no interface declares: met where it is raised, never sent under its name.

    Its subclasses live beside what raises them (a record that does not parse, a schema this
    timelined does not know, a bad input file of timelinectl, stdout that cannot be written).
    Each has a `name` of its own (what `timelinectl --json` and the logs call it) and says what
    was wrong in its message and parameters. One that escapes a method of the daemon is a bug:
    the daemon answers it as InternalError, like any exception nobody named
    (`timelined.daemon.varlink_setup`); the engine, the boot and the CLIs treat one as they
    treat an unexpected exception, never as a refusal.
    """

    name = "LocalError"


def all_error_classes() -> list[type[TimelinedError]]:
    """Every named error class (not `LocalError`'s), for the interface files and the client's
    name → class map."""
    seen: list[type[TimelinedError]] = []
    stack: list[type[TimelinedError]] = [TimelinedError]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub not in seen and not issubclass(sub, LocalError):
                seen.append(sub)
                stack.append(sub)
    return seen
