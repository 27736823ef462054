"""Build hook: write timelined/client_sync.py (the blocking client) from timelined/client.py.

The blocking client is generated, never committed (tools/async_to_sync.py says why); every
build — a wheel, an sdist install, `pip install -e .` — writes it first, so an installed
timelined always has it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class GenerateBlockingClient(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        tool = Path(self.root) / "tools" / "async_to_sync.py"
        spec = importlib.util.spec_from_file_location("async_to_sync", tool)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if module.main([]) != 0:
            raise RuntimeError("tools/async_to_sync.py could not generate the blocking client")
