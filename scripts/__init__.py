"""Maintenance scripts (run them as `python scripts/NAME.py`); a package so that tests can import
what a script defines (`from scripts import mutations`)."""
