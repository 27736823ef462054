"""MemoryDenyWriteExecute=yes does not break the interpreter or its libraries.

systemd enforces it with seccomp, which needs PID 1; the kernel's own equivalent
(prctl PR_SET_MDWE, Linux ≥ 6.3) refuses the same things (write+execute mappings, adding exec to
a mapping), so the child turns it on and then does what the daemon does.
"""

from __future__ import annotations

import subprocess

import pytest

from .support import PYTHON, child_env

CHILD = r"""
import ctypes, errno, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print("UNSUPPORTED", errno.errorcode.get(ctypes.get_errno()))
    sys.exit(0)

import mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("MDWE NOT ENFORCED")
    sys.exit(1)
except OSError:
    pass

import hashlib, json, sqlite3, ssl, zlib
import aiosqlite, anyio, msgspec, watchfiles
import timelined.config, timelined.logs, timelined.daemon.notify, timelined.daemon.activation

conn = sqlite3.connect(":memory:")
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE VIRTUAL TABLE t USING fts5(body)")
conn.execute("INSERT INTO t VALUES ('hello world')")
assert conn.execute("SELECT body FROM t WHERE t MATCH 'hello'").fetchall() == [("hello world",)]
assert msgspec.json.decode(msgspec.json.encode({"b": 1})) == {"b": 1}
hashlib.sha256(b"x").hexdigest()

async def main():
    async with aiosqlite.connect(":memory:") as db:
        cur = await db.execute("SELECT 41 + 1")
        assert await cur.fetchall() == [(42,)]
    await anyio.to_thread.run_sync(lambda: None)

anyio.run(main)
try:
    import uvloop  # the daemon's event loop where installed (a dependency on Linux)
except ImportError:
    pass
else:
    anyio.run(main, backend_options={"use_uvloop": True})
print("OK")
"""


def test_cpython_and_dependencies_run_with_memory_deny_write_execute() -> None:
    proc = subprocess.run(
        [PYTHON, "-c", CHILD],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.stdout.startswith("UNSUPPORTED"):
        pytest.skip(f"this kernel has no PR_SET_MDWE (Linux ≥ 6.3): {proc.stdout.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "OK", proc.stdout + proc.stderr
