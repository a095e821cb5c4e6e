"""Benchmarks: stand-alone programs run as `python -m bench.<name>`; not part of the test suite.

Each prints its figures as a small table; docs/benchmarks.md records them with the machine
and the command that produced them.
"""
