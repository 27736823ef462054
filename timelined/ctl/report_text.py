"""A boot, recovery or repair report in words: what happened, what was done, what to do.

The report is the api's Struct (GetRecoveryReport's reply); this is how timelinectl shows it.
docs/recovery.md explains every verdict at more length.
"""

from __future__ import annotations

from timelined.api.reports import Report

_VERDICT_MEANING = {
    "clean": "The daemon had stopped cleanly; nothing needed to be scanned or repaired.",
    "recovered": "The daemon had not stopped cleanly. Everything acknowledged was recovered "
    "from the log; nothing was lost.",
    "recovered_with_loss": "The state database held events the log does not (possible only "
    "with log.fsync other than 'always', or by tampering). It was rebuilt from the log; those "
    "events are lost.",
    "degraded": "The audit log is damaged before its tail. The daemon serves reads and refuses "
    "every write until an operator acts.",
    "failed": "The boot could not complete; the daemon did not start.",
}


def _meaning(report: Report) -> str:
    """What the verdict means, in the words that fit how this boot (or repair) came to it."""
    if report.kind == "repair":
        return (
            "The state database was rebuilt from the log while the daemon served "
            '(`timelinectl repair`, or verify.on_drift = "repair"); the log was not changed.'
        )
    if report.verdict == "clean" and not report.marker_found and not report.fast_path:
        return "A new state directory: there was nothing to recover."
    if report.verdict == "recovered" and report.read_only_before:
        return (
            "The last run served read-only because a verification had found the log damaged; "
            "a read-only daemon writes no clean-shutdown marker, so this boot checked the files. "
            "The whole chain verifies again (see below): writes are accepted, nothing was lost."
        )
    if report.verdict == "recovered" and report.marker_found:
        return (
            "The daemon had stopped cleanly, but the files did not match its clean-shutdown "
            "marker (see below), so the boot checked them. Everything acknowledged is there; "
            "nothing was lost."
        )
    return _VERDICT_MEANING.get(report.verdict, "")


def render_summary(report: Report) -> str:
    """A human summary: what happened, what was done, what to do, where quarantined bytes are."""
    lines = [
        f"{report.kind} report {report.id}",
        f"verdict: {report.verdict} — {_meaning(report)}",
        f"started {report.started_at}, finished {report.finished_at or '(unfinished)'}",
        "",
        "What was found:",
    ]
    if report.kind == "repair":  # no marker, no scan, no integrity check: a replay of the log
        lines.append(f"  the log ends at seq {report.log_last_seq}")
    else:
        lines.append(
            f"  clean-shutdown marker: {'found' if report.marker_found else 'absent'}"
            + (f" ({report.marker_problem})" if report.marker_problem else "")
        )
        if report.fast_path:
            lines.append("  marker matched the log's tail: nothing was scanned")
        else:
            lines.append(
                f"  scanned {report.lines_scanned} log lines in {report.segments_scanned} "
                f"segment(s); log ends at seq {report.log_last_seq}"
            )
    if report.state_last_seq_before is not None:
        lines.append(f"  state database was at seq {report.state_last_seq_before}")
    if report.kind != "repair":
        lines.append(f"  state integrity check: {report.integrity_check}")
    if report.damage is not None:
        d = report.damage
        lines.append(f"  LOG DAMAGE at seq {d.seq} ({d.segment} offset {d.offset}): {d.reason}")
    lines += ["", "What was done:"]
    done = False
    for torn in report.torn:
        done = True
        lines.append(
            f"  cut a torn tail of {torn.length} bytes from {torn.segment} at offset "
            f"{torn.offset}; the bytes are kept in {torn.quarantined_to}"
        )
    if report.reserved_released:
        done = True
        lines.append(
            f"  reserved bytes released: {report.reserved_released} (space the writer had "
            "reserved ahead of the log's end; no record was there)"
        )
    for rebuild in report.rebuilds:
        done = True
        lines.append(
            f"  rebuilt the state from the log ({rebuild.reason}): {rebuild.events_replayed} "
            f"events replayed, {rebuild.events_lost} lost"
            + (f"; old state kept in {rebuild.quarantined_to}" if rebuild.quarantined_to else "")
        )
    if report.events_rolled_forward:
        done = True
        lines.append(f"  rolled the state forward by {report.events_rolled_forward} events")
    if not done:
        lines.append("  nothing")
    if report.error:
        lines += ["", f"Error: {report.error}"]
    lines += ["", "What to do:"]
    lines += [f"  {a}" for a in report.actions] or ["  nothing"]
    if report.phases:
        lines += ["", "Time per phase:"]
        width = max(16, *(len(p.name) for p in report.phases))
        lines += [f"  {p.name:<{width}} {p.seconds * 1000:9.1f} ms" for p in report.phases]
    return "\n".join(lines)
