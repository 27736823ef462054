"""timelined.ctl."""
