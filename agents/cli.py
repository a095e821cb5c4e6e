"""`telemetry agent` (and `python -m agents` via `main`): run, test or check a device agent.

The only agent module that imports click. Bad arguments and bad config raise
`click.UsageError` with one line naming the file, table and key (exit code 2 through
`collector.cli.main` or `agents.__main__`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from agents.config import AgentConfig, AgentConfigError, InputConfig, load_config

if TYPE_CHECKING:
    from agents.runner import Runner
    from agents.sources import Source
    from schemas.wire import Reading

log = logging.getLogger(__name__)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@click.command("agent", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="agent.toml",
    show_default=True,
    envvar="TELEMETRY_AGENT_CONFIG",
    help="Agent TOML file (see deploy/agent.example.toml).",
)
@click.option(
    "--once",
    is_flag=True,
    help="Sample every input once, send, and exit when the collector has ACKed it all.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the readings each input produces now; no spool, no connection (implies --once).",
)
@click.option(
    "--check-config",
    is_flag=True,
    help="Validate the config and every input (programs of command inputs, sensor kinds), "
    "print a summary and exit; each problem is one error line (exit status 2).",
)
@click.option(
    "--kinds",
    "kinds_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --check-config: the collector's kinds file, so inputs may use its kinds.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Log verbosity (logs go to stderr).",
)
def agent(
    config_path: Path,
    once: bool,
    dry_run: bool,
    check_config: bool,
    kinds_file: Path | None,
    log_level: str,
) -> None:
    """Run a device agent: read inputs, spool readings on disk, stream them to a collector.

    \b
    Examples:
      telemetry agent --config agent.toml              run until stopped (SIGTERM/Ctrl-C)
      telemetry agent --config agent.toml --once --dry-run   show what each input reads
      telemetry agent --config agent.toml --check-config     validate and exit
    """
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    cfg = _load(config_path)
    if check_config:
        from agents.check import describe, problems

        found = problems(cfg, kinds_file=kinds_file)
        if found:
            prefix = click.get_current_context().command_path
            for problem in found:
                click.echo(f"{prefix}: error: {problem}", err=True)
            sys.exit(2)
        click.echo(describe(cfg, config_path))
        return
    if dry_run:
        sys.exit(_dry_run(cfg))
    import asyncio

    from agents.runner import DeviceRefused, Runner
    from agents.spool import SpoolError

    runner = Runner(cfg, reader=lambda: _read(config_path))
    try:
        asyncio.run(_serve(runner, once=once))
    except (SpoolError, DeviceRefused) as exc:
        raise click.ClickException(str(exc)) from None
    except asyncio.CancelledError:
        log.info("agent stopped")
    except KeyboardInterrupt:
        log.info("agent interrupted")


def _load(path: Path) -> AgentConfig:
    """Load the config and build every input once, so option errors surface now."""
    try:
        cfg = load_config(path)
        if not cfg.tls.enabled:
            _without_ssl()
        from agents.runner import build_inputs

        build_inputs(cfg)
    except AgentConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return cfg


def _read(path: Path) -> tuple[AgentConfig, list[tuple[InputConfig, Source]]]:
    """The config and its built inputs, read again for a reload. Raises AgentConfigError."""
    from agents.runner import build_inputs

    cfg = load_config(path)
    return cfg, build_inputs(cfg)


def _without_ssl() -> None:
    """Keep asyncio from importing ssl when TLS is off.

    asyncio imports ssl at import time only to offer TLS; libssl and libcrypto cost a device
    ~4.5 MB of RSS (docs/benchmarks.md). With `sys.modules["ssl"] = None` the import raises
    ImportError, which asyncio handles by going without TLS. Only the CLI does this, before
    anything has imported asyncio or ssl; the Python API leaves the host program alone.
    """
    if "ssl" not in sys.modules and "asyncio" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]  # the documented import blocker


async def _serve(runner: Runner, *, once: bool) -> None:
    import asyncio
    import signal

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    # systemd's ExecReload sends SIGHUP; its default action would end the agent. A one-shot
    # run has nothing to reload but must not die of it either.
    loop.add_signal_handler(signal.SIGHUP, (lambda: None) if once else runner.request_reload)
    await runner.run(once=once)


def _dry_run(cfg: AgentConfig) -> int:
    import asyncio

    from agents.runner import dry_run
    from agents.sources import SourceError

    failed = 0
    for inp, result in asyncio.run(dry_run(cfg)):
        if isinstance(result, SourceError):
            failed += 1
            click.echo(f"{inp.label}: error: {result}", err=True)
            continue
        for r in result:
            click.echo(format_reading(inp, r))
    return 1 if failed else 0


def format_reading(inp: InputConfig, r: Reading) -> str:
    """One reading as a dry-run line: `> sensor kind=... value=... unit=... tags=... ts=...`."""
    ts = datetime.fromtimestamp(r.ts_ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")
    value = json.dumps(
        dict(r.value) if not isinstance(r.value, int | float | bool | str) else r.value
    )
    tags = ",".join(f"{k}={v}" for k, v in sorted((r.tags or {}).items())) or "-"
    return (
        f"> {r.sensor} kind={r.kind} value={value} unit={r.unit or '-'} tags={tags} "
        f"ts={ts.replace('+00:00', 'Z')} input={inp.label}"
    )


def main(argv: list[str] | None = None) -> None:
    """`python -m agents`: run the command; click errors become one line and exit code 2."""
    prog = "python -m agents"
    try:
        rv = agent.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo(f"{prog}: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"{prog}: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code if exc.exit_code != 1 else 2)
    sys.exit(rv if isinstance(rv, int) else 0)
