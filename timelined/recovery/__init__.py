"""timelined.recovery."""
