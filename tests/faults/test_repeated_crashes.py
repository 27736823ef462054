"""Crash after crash at the same place: recovery keeps everything it ever cut (Rule 5).

Found while checking crash states: two power cuts that tear different batches at the same offset
of the same segment made the second boot write its quarantine copy over the first one's
(`<segment>.<offset>.torn`), so the bytes the first boot cut were gone.
"""

from __future__ import annotations

from pathlib import Path

from tests.faults.harness import conversation_workload, fast_dir, make_config, prepare
from tests.helpers import dump_state, replay_dump
from timelined.auditlog.segments import list_segments
from timelined.recovery.boot import boot


def test_torn_tails_at_the_same_offset_are_all_kept() -> None:
    with fast_dir("tl-repeat-") as work:
        config = make_config(work / "state", 1 << 20)
        prepare(config, conversation_workload, clean=False)
        seg = Path(list_segments(config.log_dir)[-1].path)
        whole = seg.read_bytes()
        fragments = [b'{"seq":50,"first', b'{"seq":50,"second, longer', b'{"seq":50,"first']
        kept: list[str] = []
        for fragment in fragments:
            with seg.open("ab") as fh:
                fh.write(fragment)
            result = boot(config)
            result.lock.release()
            assert result.report.verdict == "recovered"
            (torn,) = result.report.torn
            kept.append(torn.quarantined_to)
            assert Path(torn.quarantined_to).read_bytes() == fragment
            assert seg.read_bytes() == whole
        assert kept[0] != kept[1], "the second cut did not replace the first one's copy"
        assert kept[2] == kept[0], "the same bytes at the same place: the same copy"
        copies = sorted((config.state_dir / "quarantine").glob("*.torn"))
        assert {p.read_bytes() for p in copies} == {fragments[0], fragments[1]}
        assert dump_state(config.state_db) == replay_dump(config.log_dir, work / "replay.db")
