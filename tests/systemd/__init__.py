"""Tests of the systemd pieces: units, notify, socket activation, journal logging."""
