"""`python -m agents` is `telemetry agent`, with the same one-line errors and exit code 2."""

from __future__ import annotations

import sys

import click

from agents.cli import agent


def main(argv: list[str] | None = None) -> None:
    """Run the agent command; click errors become one line on stderr and exit code 2."""
    try:
        rv = agent.main(args=argv, prog_name="python -m agents", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("python -m agents: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"python -m agents: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code if exc.exit_code != 1 else 2)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
