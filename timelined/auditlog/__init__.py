"""timelined.auditlog."""
