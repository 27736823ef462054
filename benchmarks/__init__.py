"""timelined's benchmarks: every performance target, measured against this machine's own limits.

`python -m benchmarks [--quick] [--out FILE] [PART ...]` runs the parts (see `benchmarks.cli`)
and writes one JSON file plus a readable table. Every figure carries its target and PASS/MISS,
and where the issues ask for it, its ratio to a raw limit measured in the same run.
"""
