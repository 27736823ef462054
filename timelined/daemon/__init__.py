"""timelined.daemon."""
