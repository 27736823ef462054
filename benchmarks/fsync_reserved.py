"""What one durable append costs the disk here: a growing file against space reserved ahead.

`python benchmarks/fsync_reserved.py [--rounds 3] [--appends 3000] [--dir DIR]`. Appends a
500-byte line and syncs it, `--appends` times, three ways, alternated `--rounds` times:

- `grow+fsync`: a write past the end and `fsync`, as the log's writer does today; the file's size
  changes at every append, so the sync writes the inode as well as the data (on ext4 without a
  journal, as here, a second device round trip);
- `reserved+fdatasync`: a `pwrite` into space `posix_fallocate` reserved (the size does not
  change) and `fdatasync`, which then has no metadata to write (as SQLite's WAL, reused in place);
- `reserved+fsync`: the same with `fsync` (the file's times still change).

Prints one JSON line per way and round: CPU (user + system) and wall time per append, p50 of
one append's write + sync. The directory (default: `./var/fsync_reserved`, on the disk the
daemon's state uses in `make run`) must be on the file system to measure. docs/performance.md,
"The log's last segment with space reserved ahead", has what the figures meant for the
write path, and the change they led to.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

LINE = b"x" * 499 + b"\n"
RESERVE = 8 << 20
WARM = 200


def one_way(
    path: Path, appends: int, *, reserve: bool, sync: Callable[[int], None]
) -> dict[str, float]:
    """Append and sync `appends` lines to a new file at `path`; CPU, wall and p50 per append."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if reserve:
            os.posix_fallocate(fd, 0, RESERVE)
            os.fsync(fd)
        offset = 0
        for _ in range(WARM):
            os.pwrite(fd, LINE, offset)
            offset += len(LINE)
            sync(fd)
        took: list[float] = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(appends):
            start = time.perf_counter()
            os.pwrite(fd, LINE, offset)
            offset += len(LINE)
            sync(fd)
            took.append(time.perf_counter() - start)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {
        "cpu_us": round(cpu / appends * 1e6, 1),
        "wall_us": round(wall / appends * 1e6, 1),
        "p50_us": round(statistics.median(took) * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--appends", type=int, default=3000)
    parser.add_argument("--dir", type=Path, default=Path("var/fsync_reserved"))
    args = parser.parse_args()
    if args.appends > (RESERVE // len(LINE)) - WARM:
        parser.error(f"--appends: at most {RESERVE // len(LINE) - WARM} fit the reserved space")
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / "append.test"
    ways: dict[str, tuple[bool, Callable[[int], None]]] = {
        "grow+fsync": (False, os.fsync),
        "reserved+fdatasync": (True, os.fdatasync),
        "reserved+fsync": (True, os.fsync),
    }
    for n in range(args.rounds):
        for name, (reserve, sync) in ways.items():
            row = one_way(path, args.appends, reserve=reserve, sync=sync)
            print(json.dumps({"round": n + 1, "way": name, **row}), flush=True)


if __name__ == "__main__":
    main()
