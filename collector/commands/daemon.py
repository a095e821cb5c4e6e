"""`telemetry collector`: run the collector daemon in the foreground.

Settings: defaults < `--config FILE` (TOML) < TELEMETRY_* environment < flags. The command
parses and checks them (`--check-config` stops there), sets up logging and hands over to
`collector.daemon.run`. No daemon logic here.
"""

from __future__ import annotations

import logging
import sys

import click

from collector.config import (
    DEFAULT_DB,
    DEFAULT_HTTP,
    DEFAULT_LISTEN,
    SYNCHRONOUS_MODES,
    load_config,
)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@click.command("collector", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file.")
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
    "--retention",
    metavar="DURATION",
    help="Delete readings older than this (e.g. 30d, 12h, 1.5h, 2w); default: keep forever.",
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
@click.option("--check-config", is_flag=True, help="Check the settings, print them and exit.")
def collector_cmd(config_file: str | None, check_config: bool, **flags: object) -> None:
    """Run the collector daemon in the foreground.

    Agents connect to the ingest address; /healthz, /readyz, /metrics and /api/v1/ are
    served on the HTTP address. Stop with SIGTERM or Ctrl-C (graceful, within 5 s).
    """
    from collector.daemon import check_config as check_settings

    cfg = load_config(config_file, overrides=flags)
    check_settings(cfg)
    if check_config:
        click.echo(f"config ok: {cfg}")
        return
    logging.basicConfig(level=cfg.log_level, format=LOG_FORMAT, stream=sys.stderr)
    from collector.daemon import run

    code = run(cfg, reload=lambda: load_config(config_file, overrides=flags))
    if code:
        sys.exit(code)
