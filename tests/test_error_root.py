"""Every exception class of the `timelined` package is a `TimelinedError`, but for the private
signals listed here: the project's one error root (timelined/errors.py, docs/architecture.md).

The walk imports every module (the Varlink library excepted: it is a library of its own, with
its own errors, which the client translates at its boundary: tests/client/test_error_root.py)
and looks at every exception class each one defines. Before this test, RecordError,
UnknownSchema, BadExport, OutputFailed, NoteError, ProofError and a dozen more were not.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import timelined
from timelined.errors import TimelinedError

# Control-flow signals that never reach an operator or a client: nobody is shown one. (Those
# named with a leading `_`, private to their module, are not walked: _Stop, _Refused,
# _SocketUnavailable.)
PRIVATE_SIGNALS = {
    # A verification run's worker thread saw the daemon stopping (runner.py, pgrun.py): the
    # scheduler's task is being cancelled meanwhile, and it is that cancellation which goes on
    # (verifier/scheduler.py `_in_thread` abandons the thread; `_run` lets Cancelled through
    # to it). Never a report, a reply or a message.
    "timelined.verifier.runner.Cancelled",
}
SKIPPED = "timelined.varlink"  # a library of its own (see above)


def _modules() -> list[str]:
    names = [timelined.__name__]
    for info in pkgutil.walk_packages(timelined.__path__, prefix="timelined."):
        # A `__main__` runs its command when imported (and defines nothing).
        if not info.name.startswith(SKIPPED) and not info.name.endswith(".__main__"):
            names.append(info.name)
    return names


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module_name in _modules():
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module_name
                and not name.startswith("_")
            ):
                found[f"{module_name}.{obj.__qualname__}"] = obj
    return found


def test_the_walk_finds_the_package_s_exceptions() -> None:
    found = _exception_classes()
    assert "timelined.errors.ContextNotFound" in found
    assert "timelined.client_common.RemoteError" in found
    assert set(PRIVATE_SIGNALS) <= set(found), "a private signal listed here is gone: drop it"


def test_every_public_exception_is_a_timelined_error() -> None:
    strays = sorted(
        name
        for name, cls in _exception_classes().items()
        if not issubclass(cls, TimelinedError) and name not in PRIVATE_SIGNALS
    )
    assert not strays, f"not under TimelinedError (nor a listed private signal): {strays}"


def test_a_private_signal_is_no_timelined_error() -> None:
    found = _exception_classes()
    assert not [n for n in PRIVATE_SIGNALS if issubclass(found[n], TimelinedError)]
