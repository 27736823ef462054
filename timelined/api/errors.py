"""The errors each interface declares, built from the classes of `timelined.errors`.

A class's `Params` and `doc` make its `error` line; which errors an interface lists is decided
here (those its methods can send, and those the tools meet, for the documentation). An error is
sent under the name its interface gives it: `io.timelined.Timeline.ContextNotFound`; one that
both interfaces declare (`_COMMON`, StorageError) under the interface of the called method, and
outside a call under its `home_interface` (`timelined.errors`), which declares it too
(tests/daemon/test_error_names.py checks both).
"""

from __future__ import annotations

import inspect

from timelined import errors as err
from timelined.varlink.interface import ErrorDef

ErrorClass = type[err.TimelinedError]


def error_def(cls: ErrorClass) -> ErrorDef:
    """The interface declaration of a named error: its name, parameters and doc."""
    return ErrorDef(cls.name, cls.Params, inspect.cleandoc(cls.doc))


_COMMON: tuple[ErrorClass, ...] = (
    err.PermissionDenied,
    err.InvalidArgument,
    err.LimitExceeded,
    err.LogDamaged,
    err.ShuttingDown,
    err.ProtocolError,
    err.InternalError,
)
TIMELINE_ERRORS: tuple[ErrorClass, ...] = (
    err.ConversationNotFound,
    err.ContextNotFound,
    err.BlockNotFound,
    err.CrossRefNotFound,
    err.InvalidTransition,
    err.CycleError,
    err.CrossConversationMove,
    err.BlockIdConflict,
    err.BadQuery,
    err.ImportRejected,
    err.SlowConsumer,
    err.DiskFull,
    err.StorageError,
    err.FatalStorageError,
    *_COMMON,
)
ADMIN_ERRORS: tuple[ErrorClass, ...] = (
    err.ReportNotFound,
    err.ConfigError,
    err.FeatureUnavailable,
    err.StorageError,
    err.StateLocked,
    err.BootFailed,
    err.DaemonUnavailable,
    err.BackupFailed,
    err.MigrationFailed,
    err.CheckpointInvalid,
    err.HistoryRewritten,
    *_COMMON,
)
