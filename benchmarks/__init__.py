"""The benchmark scripts (run them as `python benchmarks/NAME.py`); a package so that tests can
import what a script defines (`from benchmarks import real_models`) instead of loading it by path."""
