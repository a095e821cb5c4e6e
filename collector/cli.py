"""The `telemetry` command: one click group whose subcommands load lazily.

Each subcommand lives in the module that owns it (`collector.commands.*`, `agents.cli`) and is
imported only when run or listed, so `telemetry agent` on a device never imports the
collector's dependencies, and a subcommand's import cost is paid only by that subcommand.

Errors: bad arguments or config print one line `telemetry: error: ...` and exit 2.
"""

from __future__ import annotations

import importlib
import sys
from typing import Final

import click

from collector import __version__

# name -> "module:attribute" of a click.Command
COMMANDS: Final[dict[str, str]] = {
    "collector": "collector.commands.daemon:collector_cmd",
    "agent": "agents.cli:agent",
    "devices": "collector.commands.devices:devices",
    "query": "collector.commands.query:query",
    "series": "collector.commands.query:series",
    "tail": "collector.commands.query:tail",
    "rejected": "collector.commands.query:rejected",
    "export": "collector.commands.query:export",
    "demo": "collector.commands.demo:demo",
    "certs": "collector.commands.certs:certs",
    "migrate": "collector.commands.migrate:migrate",
}


class _LazyGroup(click.Group):
    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if not isinstance(self._load(name), _Unavailable)]

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # On an agent-only install (no `collector` extra) the collector's commands are
            # not offered; a missing module of our own packages is a bug and propagates.
            missing = (exc.name or "").split(".")[0]
            if missing in _OWN_PACKAGES:
                raise
            return _Unavailable(name, missing)
        cmd = getattr(module, attr)
        assert isinstance(cmd, click.Command)
        return cmd


_OWN_PACKAGES: Final = frozenset({"collector", "agents", "schemas"})


class _Unavailable(click.Command):
    """Stands in for a subcommand whose dependencies are not installed here."""

    def __init__(self, name: str, missing: str) -> None:
        super().__init__(
            name,
            help=f"(not installed: needs {missing})",
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        )
        self.missing = missing

    def invoke(self, ctx: click.Context) -> None:
        raise click.UsageError(
            f"'telemetry {self.name}' needs the collector extra, which is not installed here "
            f"(missing module {self.missing!r}): pip install 'sensor-telemetry[collector]'"
        )


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="telemetry")
def cli() -> None:
    """Sensor telemetry: agents stream readings to a collector that stores them in SQLite.

    \b
    Quick start:
      telemetry demo                      collector + simulated agents, live
      telemetry devices add greenhouse-1  register a device, print its token
      telemetry collector                 run the collector daemon
      telemetry agent --config agent.toml run an agent on a device
      telemetry query --since 1h          read stored readings
    """


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the group with one-line errors and exit code 2."""
    try:
        rv = cli.main(args=argv, prog_name="telemetry", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("telemetry: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        prefix = "telemetry"
        ctx = getattr(exc, "ctx", None)
        if ctx is not None and ctx.command_path:
            prefix = ctx.command_path
        click.echo(f"{prefix}: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code if exc.exit_code != 1 else 2)
    sys.exit(rv if isinstance(rv, int) else 0)
