"""The read-after-write matrix on a real daemon (benchmarks/read_latency.py): every kind of
write, then at once every read that promises read-your-writes. Each read must see the write it
follows, and answer well under the search's one-second wait: a read that waits for a timer or
for an unrelated later call (the index pass a search after a write without blocks waited for)
answers after its whole bound, or without the write."""

from __future__ import annotations

from benchmarks.read_latency import READS, WRITES, daemon, matrix, table
from timelined.client import Client

# Every read is milliseconds on an idle machine (3-40 ms here); the timers a lost wake-up falls
# back on are 80 ms (the COMMIT's and the index's delays) and 1 s (the search's bound). Just
# under the search's bound, so that a loaded CI machine's pause is not taken for a timer; a read
# that waited that bound out also answers without the write, which `saw` catches.
SLOW_S = 0.9


def test_every_read_after_every_write_sees_it_without_waiting_for_a_timer() -> None:
    with daemon() as proc, Client(proc.socket_path) as c:
        rows = matrix(c, settle=0.0)
    assert len(rows) == len(WRITES) * len(READS)
    missed = [row for row in rows if not row.saw]
    slow = [row for row in rows if row.seconds > SLOW_S]
    assert not missed, "reads that missed the write before them:\n" + table(missed)
    assert not slow, "reads that waited for a timer:\n" + table(slow)
