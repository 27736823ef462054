"""Fixtures: state directories a real Engine wrote (fsync off, small segments), copied per test."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from tests.verifier.workload import populate
from timelined.api.verify import VerifyReport
from timelined.config import Config, LogConfig, VerifyConfig, default_config
from timelined.verifier.runner import Paths, verify_paths
from timelined.writer.engine import Engine

SEGMENT_BYTES = 8192  # many segments from a few hundred events


async def until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait for `predicate()` to hold; fails the test after `seconds`."""
    with anyio.fail_after(seconds):
        while True:
            if predicate():
                return
            await anyio.sleep(0.02)


def config_for(state_dir: Path, segment_bytes: int = SEGMENT_BYTES, **verify: object) -> Config:
    return default_config(
        state_dir,
        log=LogConfig(fsync="off", segment_bytes=segment_bytes),
        verify=VerifyConfig(**{"on_boot": False, "interval_s": 0, **verify}),  # type: ignore[arg-type]
    )


def build(
    state_dir: Path, events: int, segment_bytes: int = SEGMENT_BYTES, writers: int = 8
) -> None:
    """A stopped daemon's directory holding `events` events of a realistic mix."""

    async def go() -> None:
        async with Engine.open(config_for(state_dir, segment_bytes)) as engine:
            await populate(engine, events, writers=writers, seed=events)

    anyio.run(go)


@pytest.fixture(scope="session")
def small_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~600 events over a few dozen segments."""
    base = tmp_path_factory.mktemp("small") / "state"
    build(base, 600)
    return base


@pytest.fixture(scope="session")
def large_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~20k events in 1 MiB segments."""
    base = tmp_path_factory.mktemp("large") / "state"
    build(base, 20_000, segment_bytes=1 << 20, writers=64)
    return base


@pytest.fixture
def small_dir(small_base: Path, tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "state"
    shutil.copytree(small_base, target)
    yield target


@pytest.fixture
def large_dir(large_base: Path, tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "state"
    shutil.copytree(large_base, target)
    yield target


def verify_offline(state_dir: Path) -> VerifyReport:
    """The full offline verification, in-process (the child-process path has its own tests)."""
    return verify_paths(
        Paths.of(state_dir, state_dir.parent / "work"),
        trigger="test",
        mode="offline",
        copy=True,
        processes=False,
    )
