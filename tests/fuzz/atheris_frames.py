"""An atheris (libFuzzer) target for the frame parser: `python tests/fuzz/atheris_frames.py`.

The input is split into chunks by its own first bytes and fed to a FrameSplitter; every frame is
decoded as a call, and the call's parameters by the decoder of a real method. Only the errors
the server turns into named replies may escape (anything else is a crash for libFuzzer).

    python tests/fuzz/atheris_frames.py -runs=1000000 -max_len=65536   # a longer run
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import msgspec

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from timelined import api
    from timelined.varlink.framing import (
        FrameSplitter,
        FrameTooLarge,
        MalformedMessage,
        decode_call,
    )

DECODERS = [msgspec.json.Decoder(m.parameters) for i in api.INTERFACES for m in i.methods]
NAMED = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError)
LIMIT = 4096


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    method = fdp.ConsumeIntInRange(0, len(DECODERS) - 1)
    cuts = sorted(fdp.ConsumeIntInRange(0, 4096) for _ in range(fdp.ConsumeIntInRange(0, 4)))
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    splitter = FrameSplitter(LIMIT)
    frames: list[bytes] = []
    last = 0
    try:
        for cut in [*cuts, len(body)]:
            cut = min(cut, len(body))
            if cut < last:
                continue
            frames += splitter.feed(body[last:cut])
            last = cut
            if splitter.buffered > LIMIT:
                raise AssertionError("the splitter holds more than the limit")
    except FrameTooLarge as exc:
        frames += exc.frames
    for frame in frames:
        if b"\0" in frame or len(frame) > LIMIT:
            raise AssertionError(f"a bad frame came out of the splitter: {frame[:100]!r}")
        try:
            call = decode_call(frame)
        except MalformedMessage:
            continue
        try:
            DECODERS[method].decode(call.parameters)
        except NAMED:
            pass


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
