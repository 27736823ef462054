"""timelined: an LLM chat application's memory, kept safe in a hash-chained log and SQLite."""

__version__ = "0.1.0"
