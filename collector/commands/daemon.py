"""`telemetry collector`: run the collector daemon in the foreground.

Settings: defaults < `--config FILE` (TOML) < TELEMETRY_* environment < flags. The command
parses and checks them (`--check-config` stops there), sets up logging and hands over to
`collector.daemon.run`. No daemon logic here.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import click

from collector.config import (
    DEFAULT_DB,
    DEFAULT_HTTP,
    DEFAULT_LISTEN,
    SYNCHRONOUS_MODES,
    Config,
    load_config,
)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def describe(cfg: Config, config_file: str | None, kinds: list[str]) -> str:
    """The effective settings in a few lines a person reads (`--check-config`)."""
    source = f"config ok ({config_file})" if config_file else "config ok (no config file)"
    db: Path | str
    if "://" in cfg.db:  # a database server: show where, never its password
        scheme, _, rest = cfg.db.partition("://")
        db, db_state = f"{scheme}://{rest.rpartition('@')[2]}", "a server"
    else:
        db = Path(os.path.abspath(cfg.db))
        if db.exists():
            db_state = f"exists, {db.stat().st_size / 1e6:.1f} MB"
        else:
            db_state = "created at start"
    http = "off"
    if cfg.http_addr is not None:
        http = f"{cfg.http}  ({'read token set' if cfg.http_token else 'no read token'})"
    tls = {"off": "off", "on": f"on ({cfg.tls_cert})"}.get(
        cfg.tls_mode, f"mutual ({cfg.tls_cert}; device certificates from {cfg.tls_client_ca})"
    )
    devices = "registered only"
    if cfg.allow_unknown_devices:
        devices = "unknown devices register themselves (demos only)"
    lim = cfg.limits
    rate = lim.max_readings_per_s_per_device or "unlimited"
    lines = [
        source,
        f"  ingest       {cfg.listen}  TLS {tls}"
        + (
            f"  PROXY header from {', '.join(cfg.proxy_protocol_from)}"
            if cfg.proxy_protocol
            else ""
        ),
        f"  http         {http}",
        f"  database     {db}  ({db_state}; synchronous={cfg.synchronous})",
        f"  kinds        {', '.join(kinds) if kinds else 'built-in only'}"
        + (f"  ({cfg.kinds})" if cfg.kinds else ""),
        f"  retention    {cfg.retention or 'keep everything'}",
        f"  devices      {devices}",
        f"  workers      {cfg.ingest_workers} ingest process"
        + ("es (limits below apply to each)" if cfg.ingest_workers > 1 else ""),
        f"  limits       {lim.max_connections} connections, {lim.max_connections_per_ip} per "
        f"address, {rate} readings/s per device",
        f"  log level    {cfg.log_level}",
    ]
    return "\n".join(lines)


@click.command("collector", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="TELEMETRY_CONFIG",
    help="TOML config file (env TELEMETRY_CONFIG). Its db setting is also where "
    "`telemetry devices`, `query` and the other read commands look.",
)
@click.option(
    "--listen", help=f"Ingest address HOST:PORT (default {DEFAULT_LISTEN}; port 0 picks one)."
)
@click.option("--http", help=f"HTTP address HOST:PORT or 'off' (default {DEFAULT_HTTP}).")
@click.option("--db", help=f"SQLite database file (default {DEFAULT_DB}).")
@click.option("--kinds", help="TOML file of user-defined sensor kinds.")
@click.option(
    "--synchronous",
    type=click.Choice(SYNCHRONOUS_MODES, case_sensitive=False),
    help="SQLite synchronous mode (default FULL: an ACK survives power loss).",
)
@click.option("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO).")
@click.option(
    "--allow-unknown-devices",
    is_flag=True,
    default=None,
    help="Register unknown devices on their first HELLO (demos only).",
)
@click.option(
    "--http-token",
    help="Read token the HTTP query API requires (mandatory when --http is not loopback); "
    "prefer TELEMETRY_HTTP_TOKEN or the config file over the command line.",
)
@click.option("--tls-cert", help="PEM certificate for TLS on the ingest port (with --tls-key).")
@click.option("--tls-key", help="PEM private key of --tls-cert.")
@click.option(
    "--tls-client-ca",
    help="CA file for mutual TLS: agents must present a certificate from it naming their "
    "device id.",
)
@click.option(
    "--proxy-protocol",
    is_flag=True,
    default=None,
    help="Require a PROXY protocol header (v1 or v2, HAProxy send-proxy-v2) on every ingest "
    "connection; the client it names is the one logged, counted and limited.",
)
@click.option(
    "--proxy-protocol-from",
    metavar="NETS",
    help="Comma-separated networks allowed to send the PROXY header "
    "(default 127.0.0.1/32,::1/128).",
)
@click.option(
    "--retention",
    metavar="DURATION",
    help="Delete readings older than this (e.g. 30d, 12h, 1.5h, 2w); default: keep forever.",
)
@click.option(
    "--ingest-workers",
    type=int,
    metavar="N",
    help="Ingest processes (default 1): each accepts, decodes, validates and commits on "
    "its own core, all listening on the ingest port (SO_REUSEPORT: Linux only); one "
    "maintenance process and one HTTP server serve them all. Connection and rate limits "
    "apply per process.",
)
@click.option("--max-connections", type=int, help="Most concurrent agent connections.")
@click.option(
    "--max-connections-per-ip", type=int, help="Most concurrent connections per source address."
)
@click.option(
    "--max-readings-per-s-per-device",
    type=int,
    help="Per-device rate limit in readings/s, answered with RETRY (default 0: unlimited).",
)
@click.option("--max-frame-bytes", type=int, help="Largest frame accepted from an agent.")
@click.option("--handshake-timeout-s", type=float, help="Seconds an agent has to send HELLO.")
@click.option("--heartbeat-ms", type=int, help="Silence before the collector sends PING.")
@click.option("--idle-timeout-s", type=float, help="Silence before a connection is closed.")
@click.option("--bad-frame-budget", type=int, help="Undecodable frames tolerated per connection.")
@click.option("--queue-rows", type=int, help="Rows waiting for the writer before backpressure.")
@click.option("--txn-max-rows", type=int, help="Most rows per group-commit transaction.")
@click.option(
    "--check-config",
    is_flag=True,
    help="Check the settings and the files they name (database directory, kinds, TLS), "
    "print a summary and exit; each problem is one error line (exit status 2).",
)
def collector_cmd(config_file: str | None, check_config: bool, **flags: object) -> None:
    """Run the collector daemon in the foreground.

    Agents connect to the ingest address; /healthz, /readyz, /metrics and /api/v1/ are
    served on the HTTP address. Stop with SIGTERM or Ctrl-C (graceful, within 5 s).
    """
    from collector.daemon import config_problems

    cfg = load_config(config_file, overrides=flags)
    problems, kinds = config_problems(cfg)
    if problems:
        prefix = click.get_current_context().command_path
        for problem in problems:
            click.echo(f"{prefix}: error: {problem}", err=True)
        sys.exit(2)
    if check_config:
        click.echo(describe(cfg, config_file, [k.name for k in kinds]))
        return
    logging.basicConfig(level=cfg.log_level, format=LOG_FORMAT, stream=sys.stderr)
    from collector.daemon import run

    # A partial, not a lambda: it pickles, so ingest worker processes reload the same way.
    code = run(cfg, reload=functools.partial(load_config, config_file, overrides=flags))
    if code:
        sys.exit(code)
