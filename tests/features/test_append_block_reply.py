"""AppendBlock's reply echoes the stored block: it is never sent past limits.max_message_bytes.

With max_block_bytes at or above max_message_bytes, a call that fits one frame could store a
block whose reply (the block with its id, timestamp, seq and position added) does not: a client
with the same frame limit could not read the answer to a write that happened, and its retry
would meet the same. The call is refused before anything is written instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from tests.daemon.harness import DaemonProcess, serving
from tests.daemon.memory_abuse import connect, read_frames

MAX_MESSAGE = 8192
TL_APPEND_BLOCK = "io.timelined.Timeline.AppendBlock"


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    limits = {"max_block_bytes": 64 * 1024, "max_message_bytes": MAX_MESSAGE}
    with serving(limits=limits) as proc:
        yield proc


def _call(daemon: DaemonProcess, method: str, parameters: dict[str, Any]) -> dict[str, Any]:
    frame = msgspec.json.encode({"method": method, "parameters": parameters})
    assert len(frame) <= MAX_MESSAGE
    with connect(daemon.socket_path) as sock:
        sock.settimeout(30)
        sock.sendall(frame + b"\0")
        reply = read_frames(sock)[0]
    assert len(reply) <= MAX_MESSAGE, f"a reply of {len(reply)} bytes past the frame limit"
    decoded: dict[str, Any] = msgspec.json.decode(reply)
    return decoded


def _append(ctx: str, content: str) -> dict[str, Any]:
    return {"context_id": ctx, "role": "user", "content": content}


def _sized(ctx: str, size: int) -> dict[str, Any]:
    """AppendBlock's parameters whose call frame is exactly `size` bytes."""
    empty = {"method": TL_APPEND_BLOCK, "parameters": _append(ctx, "")}
    return _append(ctx, "z" * (size - len(msgspec.json.encode(empty))))


def test_a_block_whose_reply_would_pass_the_frame_limit_is_refused_before_writing(
    daemon: DaemonProcess,
) -> None:
    conv = _call(daemon, "io.timelined.Timeline.CreateConversation", {"name": "limits"})
    ctx = conv["parameters"]["conversation"]["root_context_id"]
    before = _call(daemon, "io.timelined.Admin.GetStatus", {})["parameters"]["status"]["last_seq"]

    refused = _call(daemon, TL_APPEND_BLOCK, _sized(ctx, MAX_MESSAGE))  # the largest call
    assert refused["error"] == "io.timelined.Timeline.LimitExceeded", refused
    assert refused["parameters"]["limit"] == "limits.max_message_bytes (reply)"
    assert refused["parameters"]["maximum"] == MAX_MESSAGE
    assert refused["parameters"]["size"] > MAX_MESSAGE
    after = _call(daemon, "io.timelined.Admin.GetStatus", {})["parameters"]["status"]["last_seq"]
    assert after == before  # nothing written

    # A block a little smaller is stored, and its reply fits.
    stored = _call(daemon, TL_APPEND_BLOCK, _sized(ctx, MAX_MESSAGE - 512))
    assert "error" not in stored, stored
    assert stored["parameters"]["block"]["position"] == 1
