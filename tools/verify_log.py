"""Verify a timelined audit log with the standard library only (the rule: docs/log-format.md).

Usage: python tools/verify_log.py LOGDIR — prints OK, or the first bad seq; exit 0 / 1 (66: no
such directory, as timelined's tools say of a missing input).
"""

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, BinaryIO

KEYS = ["seq", "ts", "type", "actor", "data", "prev", "hash"]
TAIL = re.compile(rb',"prev":"[0-9a-f]{64}"(,"hash":"([0-9a-f]{64})"\}\n)\Z')  # 1: not hashed
NAME = re.compile(r"[0-9]{20}\.jsonl")  # not \d: that matches any Unicode digit


def sha256(covered: bytes) -> bytes:
    return hashlib.sha256(covered).hexdigest().encode()


def parse(line: bytes) -> tuple[dict[str, Any], list[str]]:
    """The line's object, and its own members' names with repeats (json.loads keeps the last)."""
    objects: list[list[tuple[str, Any]]] = []  # innermost first: the line's own comes last

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        objects.append(pairs)
        return dict(pairs)

    obj = json.loads(line, object_pairs_hook=hook)
    return obj, [k for k, _ in objects[-1]] if isinstance(obj, dict) else []


def content_end(f: BinaryIO, chunk: int = 1 << 20) -> int:
    """The offset just past the file's last byte that is not a NUL, read backwards by chunks."""
    end = f.seek(0, 2)
    while end > 0:
        f.seek(max(0, end - chunk))
        data = f.read(min(chunk, end))
        kept = len(data.rstrip(b"\0"))
        if kept:
            end = end - len(data) + kept
            break
        end -= len(data)
    f.seek(0)
    return end


def verify(log_dir: Path) -> tuple[int, str]:
    """(last seq, last hash) of a good log; raises ValueError('seq N: why') at the first fault."""
    seq, prev = 0, "0" * 64
    names = (p for p in log_dir.iterdir() if NAME.fullmatch(p.name) and int(p.name[:20]))
    segments = sorted(names)  # seq 0 names no segment: 000…0.jsonl is ignored, as by timelined
    for n, path in enumerate(segments):
        first, named = seq + 1, int(path.name[:20])
        if named != first:  # the seq named: the first missing one, or the one seen again ...
            with path.open("rb") as f:  # ... unless its first line is whole and holds `first`
                line = f.readline()
            if line.startswith(b'{"seq":%d,' % first) and (tail := TAIL.search(line)):
                named = first if sha256(line[: tail.start(1)] + b"}") == tail.group(2) else named
            raise ValueError(f"seq {min(first, named)}: segment {path.name} is not seq {first}")
        if not path.is_file():  # a directory named like a segment: timelined refuses to boot
            raise ValueError(f"seq {first}: {path.name} is not a regular file")
        if path.stat().st_size == 0 and n < len(segments) - 1:
            raise ValueError(f"seq {first}: empty segment {path.name} before the last")
        with path.open("rb") as lines:
            # The last segment may end in NULs (space reserved ahead): read up to them only, so
            # that they are never held as one line (up to 16 MiB).
            end = content_end(lines) if n == len(segments) - 1 else None
            while line := lines.readline(-1 if end is None else end - lines.tell()):
                want = seq + 1
                tail = TAIL.search(line)
                if tail is None:
                    raise ValueError(f"seq {want}: line without hash member or newline")
                digest = sha256(line[: tail.start(1)] + b"}").decode()
                if digest != tail.group(2).decode():
                    raise ValueError(f"seq {want}: hash mismatch")
                try:
                    obj, keys = parse(line)
                except ValueError:
                    raise ValueError(f"seq {want}: not JSON") from None
                if keys != KEYS:
                    raise ValueError(f"seq {want}: members missing, repeated or out of order")
                if type(obj["seq"]) is not int or obj["seq"] != want:
                    found = obj["seq"] if type(obj["seq"]) is int and obj["seq"] > 0 else want
                    raise ValueError(f"seq {min(want, found)}: found seq {obj['seq']!r}")
                # json.loads skips whitespace; the writer's envelope has none, and timelined
                # refuses a line that is not exactly that (data is hashed as written).
                ts, kind, actor = (
                    json.dumps(obj[k], separators=(",", ":"), ensure_ascii=False).encode()
                    for k in KEYS[1:4]
                )
                envelope = b'{"seq":%d,"ts":%s,"type":%s,"actor":%s,"data":' % (
                    want,
                    ts,
                    kind,
                    actor,
                )
                if not line.startswith(envelope):
                    raise ValueError(f"seq {want}: members not written as the writer writes them")
                if obj["prev"] != prev:
                    raise ValueError(f"seq {want}: prev does not link to seq {seq}")
                seq, prev = want, digest
    return seq, prev


if __name__ == "__main__":
    if sys.argv[1:] in (["-h"], ["--help"]):
        print(__doc__.strip())
        sys.exit(0)
    if len(sys.argv) != 2:
        sys.exit("usage: python tools/verify_log.py LOGDIR")
    if not Path(sys.argv[1]).is_dir():  # 66: EX_NOINPUT
        why = "is not a directory" if Path(sys.argv[1]).exists() else "does not exist"
        print(f"{sys.argv[1]}: {why} (usage: python tools/verify_log.py LOGDIR)", file=sys.stderr)
        sys.exit(66)
    if (Path(sys.argv[1]) / "log").is_dir():  # a state directory would pass as an empty log
        sys.exit(f"usage: python tools/verify_log.py LOGDIR ({sys.argv[1]}/log, not its parent)")
    try:
        count, head = verify(Path(sys.argv[1]))
    except ValueError as exc:
        sys.exit(f"FAIL {exc}")
    print(f"OK {count} events, head hash {head}")
