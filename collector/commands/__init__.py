"""Subcommands of `telemetry`, one module per area; registered lazily by `collector.cli`."""
