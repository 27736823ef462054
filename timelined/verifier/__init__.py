"""The verifier: chain verification, replay-and-compare, drift reports, scheduling, repair.

`Verifier` is what the daemon owns; `offline.run_offline` is `timelined verify --state-dir DIR`.
`Verifier` is imported on first use: the verifier's child processes (worker.py) import this
package and need none of the scheduler's dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from timelined.api.verify import (
    ChainDamage,
    ChainResult,
    Difference,
    FieldDiff,
    RepairResult,
    VerifyProgress,
    VerifyReport,
    VerifyStatus,
)

if TYPE_CHECKING:
    from timelined.verifier.scheduler import Verifier


def __getattr__(name: str) -> Any:
    if name == "Verifier":
        from timelined.verifier.scheduler import Verifier

        return Verifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ChainDamage",
    "ChainResult",
    "Difference",
    "FieldDiff",
    "RepairResult",
    "Verifier",
    "VerifyProgress",
    "VerifyReport",
    "VerifyStatus",
]
