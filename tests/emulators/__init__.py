"""Vendor emulators for integration tests: real servers on 127.0.0.1, started as context managers."""
