"""The collector daemon and the tools that read what it stored."""

# A constant rather than importlib.metadata: that import costs every `telemetry` process
# (including `telemetry agent` on a device) about 2 MB. tests/collector/test_version.py keeps
# it equal to the installed distribution's version.
__version__ = "0.1.0"
