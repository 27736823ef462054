"""timelined.state."""
