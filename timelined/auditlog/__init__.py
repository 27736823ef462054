"""The audit log: hash-chained JSON-lines segments, the source of truth (docs/log-format.md)."""

from timelined.auditlog.fileops import OS_FILEOPS, FileOps, Handle, OsFileOps
from timelined.auditlog.reader import read_lines, read_records
from timelined.auditlog.record import (
    GENESIS_PREV,
    RecordError,
    decode_content,
    decode_line,
    encode_record,
    line_hash,
)
from timelined.auditlog.repair import cut_torn_tail
from timelined.auditlog.scan import (
    ChainReport,
    Damage,
    TailScan,
    TornTail,
    scan_tail,
    walk_chain,
)
from timelined.auditlog.segments import Segment, list_segments, parse_segment_name, segment_name
from timelined.auditlog.writer import DEFAULT_SEGMENT_BYTES, LogHead, LogWriter, WriterStats

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "GENESIS_PREV",
    "OS_FILEOPS",
    "ChainReport",
    "Damage",
    "FileOps",
    "Handle",
    "LogHead",
    "LogWriter",
    "OsFileOps",
    "RecordError",
    "Segment",
    "TailScan",
    "TornTail",
    "WriterStats",
    "cut_torn_tail",
    "decode_content",
    "decode_line",
    "encode_record",
    "line_hash",
    "list_segments",
    "parse_segment_name",
    "read_lines",
    "read_records",
    "scan_tail",
    "segment_name",
    "walk_chain",
]
