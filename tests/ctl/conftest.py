"""timelinectl runs against a real daemon subprocess of its own (the tests/daemon harness)."""

from __future__ import annotations

from tests.daemon.conftest import client, daemon

__all__ = ["client", "daemon"]
