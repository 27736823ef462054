"""The malloc arena cap: applied on glibc, never over the operator's own MALLOC_ARENA_MAX."""

from __future__ import annotations

import ctypes
import platform

import pytest

from timelined.daemon.memory import limit_malloc_arenas


def test_the_operators_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limit_malloc_arenas() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="arenas are a glibc feature")
def test_applied_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert hasattr(ctypes.CDLL(None), "mallopt")
    assert limit_malloc_arenas() is True
