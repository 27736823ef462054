"""The audit log: hash-chained JSON-lines segments, the source of truth (docs/log-format.md).

Nothing is re-exported here: importing one part (a reader's `record`) must not load the others
(the writer), so callers name the module that owns what they use.
"""
