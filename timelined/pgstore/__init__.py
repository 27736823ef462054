"""The PostgreSQL store: the SQL adapter, the schema and the log table (docs/architecture.md)."""
