"""The daemon's file work in one process, for `strace` (tests/faults/test_syscall_durability.py).

`python -m tests.faults.traced_workload PHASE STATE_DIR`:

- `fresh`: boot a state directory that does not exist yet (nor its parent), write commands
  across several segments, stop cleanly (the real `mark_clean`);
- `restart`: boot on the marker (fast path), write, stop uncleanly (no marker);
- `recover`: boot after an unclean stop whose log has a torn tail and whose state database is
  gone (cut into quarantine, rebuild), write, stop uncleanly;
- `final`: boot after that unclean stop (roll forward), write, stop cleanly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from tests.faults.harness import conversation_workload, make_config
from timelined.recovery.boot import boot
from timelined.recovery.marker import mark_clean
from timelined.writer.engine import Engine


def main(phase: str, state_dir: Path) -> int:
    config = make_config(state_dir, 2048)
    result = boot(config)
    try:

        async def run() -> None:
            async with Engine.open(config, head=result.head) as engine:
                await conversation_workload(engine, batch=2)
            writer = engine.writer
            assert writer is not None and engine.fatal is None
            if phase in ("fresh", "final"):
                s = writer.stats()
                mark_clean(
                    config.marker_path, s.head_seq, s.head_hash, writer.segment_path, s.segment_size
                )

        anyio.run(run)
    finally:
        result.lock.release()
    print(result.report.verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2])))
