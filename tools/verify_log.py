"""Verify a timelined audit log with the standard library only (the rule: docs/log-format.md).

Usage: python tools/verify_log.py LOGDIR — prints OK, or the first bad seq; exit 0 / 1.
"""

import hashlib
import json
import re
import sys
from pathlib import Path

KEYS = ["seq", "ts", "type", "actor", "data", "prev", "hash"]
TAIL = re.compile(rb',"hash":"([0-9a-f]{64})"\}\n\Z')


def verify(log_dir: Path) -> tuple[int, str]:
    """(last seq, last hash) of a good log; raises ValueError('seq N: why') at the first fault."""
    seq, prev = 0, "0" * 64
    segments = sorted(p for p in log_dir.iterdir() if re.fullmatch(r"\d{20}\.jsonl", p.name))
    for n, path in enumerate(segments):
        first, named = seq + 1, int(path.name[:20])
        if named != first:  # the seq named: the first missing one, or the one seen again
            raise ValueError(f"seq {min(first, named)}: segment {path.name} is not seq {first}")
        if path.stat().st_size == 0 and n < len(segments) - 1:
            raise ValueError(f"seq {first}: empty segment {path.name} before the last")
        with path.open("rb") as lines:
            for line in lines:
                want = seq + 1
                tail = TAIL.search(line)
                if tail is None:
                    raise ValueError(f"seq {want}: line without hash member or newline")
                digest = hashlib.sha256(line[: tail.start()] + b"}").hexdigest()
                if digest != tail.group(1).decode():
                    raise ValueError(f"seq {want}: hash mismatch")
                try:
                    obj = json.loads(line)
                except ValueError:
                    raise ValueError(f"seq {want}: not JSON") from None
                if not isinstance(obj, dict) or list(obj) != KEYS:
                    raise ValueError(f"seq {want}: members missing or out of order")
                if type(obj["seq"]) is not int or obj["seq"] != want:
                    found = obj["seq"] if type(obj["seq"]) is int else want
                    raise ValueError(f"seq {min(want, found)}: found seq {obj['seq']!r}")
                if obj["prev"] != prev:
                    raise ValueError(f"seq {want}: prev does not link to seq {seq}")
                seq, prev = want, digest
    return seq, prev


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python tools/verify_log.py LOGDIR")
    if (Path(sys.argv[1]) / "log").is_dir():  # a state directory would pass as an empty log
        sys.exit(f"usage: python tools/verify_log.py LOGDIR ({sys.argv[1]}/log, not its parent)")
    try:
        count, head = verify(Path(sys.argv[1]))
    except ValueError as exc:
        sys.exit(f"FAIL {exc}")
    print(f"OK {count} events, head hash {head}")
