"""timelined.verifier."""
