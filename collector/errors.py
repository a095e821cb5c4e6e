"""Errors of the collector package.

    ConfigError   a setting, config file or command-line argument is invalid (exit code 2)

Protocol errors live in `schemas.errors`; storage errors are sqlite3's own.
"""

from __future__ import annotations

import click


class ConfigError(click.UsageError):
    """A bad setting: the message names the setting (and file) at fault. Exit code 2."""

    exit_code = 2
