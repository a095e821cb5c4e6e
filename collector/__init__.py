"""The collector daemon and the tools that read what it stored."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sensor-telemetry")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
