"""Collector settings: defaults < TOML file < TELEMETRY_* environment < command-line flags.

One frozen `Config` holds every setting with its type and default. `load_config` merges the
sources and checks each value; a bad one raises `collector.errors.ConfigError` naming the
setting and where it came from (exit code 2). Setting names are the same everywhere:
`max_connections` in the file's `[limits]` table, `TELEMETRY_MAX_CONNECTIONS` in the
environment, `--max-connections` on the command line.

Example file:

    listen = "0.0.0.0:7878"
    http = "127.0.0.1:7879"          # "off" disables the HTTP side
    db = "/var/lib/telemetry/telemetry.db"
    kinds = "/etc/telemetry/kinds.toml"
    synchronous = "FULL"
    log_level = "INFO"
    allow_unknown_devices = false
    retention = "90d"                # keep readings this long (default: forever)
    forward_listen = "off"           # Fluent forward input, e.g. "127.0.0.1:24224"
    inputs = "/etc/telemetry/inputs.toml"   # mapping rules of the foreign inputs
    http_token = "..."               # read token for /api/v1 (needed off loopback)
    tls_cert = "/etc/telemetry/certs/collector.pem"   # TLS on the ingest port when set
    tls_key = "/etc/telemetry/certs/collector.key"
    tls_client_ca = "/etc/telemetry/certs/ca.pem"     # mutual TLS: device certs from this CA
    proxy_protocol = false           # true behind HAProxy send-proxy(-v2): header required
    proxy_protocol_from = ["127.0.0.1/32", "::1/128"]  # who may send that header
    ingest_workers = 1               # ingest processes sharing the port (Linux, SO_REUSEPORT)

    [limits]
    max_connections = 10000
    max_connections_per_ip = 1000
    max_readings_per_s_per_device = 0                 # 0: unlimited

This module reads only the config file it is given; it opens no sockets or databases.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from collector.durations import UNITS, duration_ns
from collector.errors import ConfigError
from collector.ingest import writer
from schemas import wire

ENV_PREFIX: Final = "TELEMETRY_"
SYNCHRONOUS_MODES: Final = ("OFF", "NORMAL", "FULL", "EXTRA")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_LISTEN: Final = "127.0.0.1:7878"
DEFAULT_HTTP: Final = "127.0.0.1:7879"
DEFAULT_DB: Final = "./telemetry.db"
# Only a balancer on the same host may name clients unless the operator lists its addresses.
DEFAULT_PROXY_FROM: Final = ("127.0.0.1/32", "::1/128")
# Where the read and admin commands look for the collector's config when not told.
DEFAULT_CONFIG_FILE = "/etc/telemetry/collector.toml"
CONFIG_ENV: Final = "TELEMETRY_CONFIG"
DB_ENV: Final = "TELEMETRY_DB"
# Most ingest processes: one per core of a large host, with room; beyond that the one
# SQLite write lock is the limit anyway (docs/benchmarks-history.md, "Ingest workers").
MAX_INGEST_WORKERS: Final = 64
# Smallest frame limit a collector may set: HELLO with a long device id and token is ~1 KiB.
MIN_FRAME_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class Limits:
    """Protective limits of the ingest server (see schemas.wire for the protocol's own)."""

    # A few thousand devices per collector is the design point; each idle connection costs
    # a few KiB, so 10k stays well inside memory and the default fd limit of servers.
    max_connections: int = 10_000
    # Per source address. Generous because whole sites of devices sit behind one NAT
    # address; it stops one host from taking every slot of `max_connections`.
    max_connections_per_ip: int = 1_000
    # Token bucket per device, readings per second; 0 means unlimited. A batch over the
    # limit is answered RETRY rate_limited (nothing stored), so an agent catching up after
    # a long outage is slowed down rather than starving everyone else.
    max_readings_per_s_per_device: int = 0
    handshake_timeout_s: float = wire.HANDSHAKE_TIMEOUT_S
    heartbeat_ms: int = wire.HEARTBEAT_MS
    idle_timeout_s: float = wire.IDLE_TIMEOUT_S
    bad_frame_budget: int = wire.BAD_FRAME_BUDGET
    max_frame_bytes: int = wire.MAX_FRAME_BYTES
    # Batches one connection may have waiting for their ACK (pipelining depth).
    max_inflight_batches: int = 32
    # Rows (readings, fields of composites) waiting for the writer, all connections together.
    queue_rows: int = writer.QUEUE_ROWS
    # Rows per group-commit transaction.
    txn_max_rows: int = writer.TXN_MAX_ROWS
    # A peer that does not read its ACKs for this long is cut off.
    write_timeout_s: float = 30.0
    # Graceful shutdown budget: systemd's default stop timeout is far above it.
    shutdown_timeout_s: float = 4.0


@dataclass(frozen=True, slots=True)
class Config:
    listen: str = DEFAULT_LISTEN
    http: str = DEFAULT_HTTP
    db: str = DEFAULT_DB
    kinds: str | None = None
    synchronous: str = "FULL"
    log_level: str = "INFO"
    allow_unknown_devices: bool = False
    # Read token for the HTTP query API (`Authorization: Bearer ...`); required when the HTTP
    # address is not loopback (the daemon refuses to start without one). Kept out of repr.
    http_token: str | None = field(default=None, repr=False)
    # TLS on the ingest port: certificate and key (PEM); with `tls_client_ca` too, mutual
    # TLS: every agent must present a certificate from that CA naming its device id.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # Keep readings for this long ("30d", "12h", "90m"); None keeps them forever. Readings go
    # a compaction window at a time, once the whole window is older than this.
    retention: str | None = None
    # Fluent forward protocol listener (docs/inputs.md): "off" or HOST:PORT, e.g.
    # "127.0.0.1:24224". TLS as on the ingest port when tls_cert/tls_key are set.
    forward_listen: str = "off"
    # Mapping rules of the InfluxDB and forward inputs (TOML file, docs/inputs.md).
    inputs: str | None = None
    # PROXY protocol (v1 or v2) on the ingest port: every connection must start with the
    # header a TCP balancer sends (HAProxy send-proxy-v2), and only from these networks;
    # the client it names is the connection's address in logs, metrics and limits.
    proxy_protocol: bool = False
    proxy_protocol_from: tuple[str, ...] = DEFAULT_PROXY_FROM
    # Ingest processes (accept, TLS, decode, validate, group commit), each listening on the
    # ingest port with SO_REUSEPORT (Linux); 1 runs ingest in the daemon process itself.
    # The limits apply per process (collector.workers).
    ingest_workers: int = 1
    limits: Limits = Limits()

    @property
    def retention_ns(self) -> int | None:
        """The retention period in ns, or None to keep everything."""
        return None if self.retention is None else parse_duration_ns(self.retention, "retention")

    @property
    def tls_mode(self) -> str:
        """'off', 'on' (server certificate) or 'mutual' (client certificates required)."""
        if self.tls_cert is None:
            return "off"
        return "mutual" if self.tls_client_ca is not None else "on"

    @property
    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The networks allowed to send a PROXY header. Raises ConfigError."""
        out = []
        for net in self.proxy_protocol_from:
            try:
                out.append(ipaddress.ip_network(net, strict=False))
            except ValueError:
                raise ConfigError(
                    f"setting 'proxy_protocol_from': expected addresses or networks such as "
                    f"10.0.0.0/8, got {net!r}"
                ) from None
        return tuple(out)

    @property
    def listen_addr(self) -> tuple[str, int]:
        return parse_addr(self.listen, "listen")

    @property
    def http_addr(self) -> tuple[str, int] | None:
        return None if self.http.lower() == "off" else parse_addr(self.http, "http")

    @property
    def forward_addr(self) -> tuple[str, int] | None:
        off = self.forward_listen.lower() == "off"
        return None if off else parse_addr(self.forward_listen, "forward_listen")


_TOP: Final = {f.name: f for f in dataclasses.fields(Config) if f.name != "limits"}
_LIMITS: Final = {f.name: f for f in dataclasses.fields(Limits)}
# Integer settings where 0 is allowed and means "off".
_ZERO_MEANS_OFF: Final = frozenset({"max_readings_per_s_per_device"})


def parse_duration_ns(value: str, setting: str) -> int:
    """'30d', '12h', '90m', '1.5h', '2w' (collector.durations) -> nanoseconds.

    Raises ConfigError."""
    ns = duration_ns(value)
    if ns is None or ns <= 0:
        raise ConfigError(
            f"setting '{setting}': expected a positive duration such as 30d, 12h or 90m "
            f"(units: {UNITS}), got {value!r}"
        )
    return ns


def parse_addr(value: str, setting: str) -> tuple[str, int]:
    """'host:port' (IPv6 as '[::1]:port') -> (host, port). Raises ConfigError."""
    host, sep, port_s = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ConfigError(f"setting '{setting}': expected HOST:PORT, got {value!r}")
    return host, int(port_s)


def _coerce(name: str, ftype: object, value: object, source: str) -> object:
    where = f"setting '{name}' ({source})"
    t = str(ftype)
    if t == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if t == "int":
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        lowest = 0 if name.rpartition(".")[2] in _ZERO_MEANS_OFF else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
            what = "a non-negative integer (0: off)" if lowest == 0 else "a positive integer"
            raise ConfigError(f"{where}: expected {what}, got {value!r}")
        return value
    if t == "float":
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise ConfigError(f"{where}: expected a positive number, got {value!r}")
        return float(value)
    if t == "tuple[str, ...]":
        # A TOML array, or comma-separated in the environment and on the command line.
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _read_file(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None


@dataclass(frozen=True, slots=True)
class DbLocation:
    """The database a read or admin command opens, and how it was found."""

    path: str
    # "--db", "TELEMETRY_DB", "db in FILE (how FILE was found)", or "default"
    source: str

    @property
    def from_default(self) -> bool:
        return self.source == "default"


def locate_db(
    db: str | None, config_file: str | None, env: Mapping[str, str] | None = None
) -> DbLocation:
    """The collector's database, as the read and admin commands find it.

    `--db`, else TELEMETRY_DB, else the `db` setting of the collector's config file
    (`--config FILE`, else TELEMETRY_CONFIG, else DEFAULT_CONFIG_FILE when it exists), else
    ./telemetry.db. The environment beats the file, as it does for the collector itself.
    Raises ConfigError when the config file cannot be read or its `db` is not a string.
    """
    env = os.environ if env is None else env
    if db:
        return DbLocation(db, "--db")
    if env.get(DB_ENV):
        return DbLocation(env[DB_ENV], DB_ENV)
    found = ""
    if config_file:
        found = "--config"
    elif env.get(CONFIG_ENV):
        config_file, found = env[CONFIG_ENV], CONFIG_ENV
    elif Path(DEFAULT_CONFIG_FILE).is_file():
        config_file, found = DEFAULT_CONFIG_FILE, "the default config file"
    if config_file is None:
        return DbLocation(DEFAULT_DB, "default")
    value = _read_file(config_file).get("db")
    if value is None:
        return DbLocation(DEFAULT_DB, f"default: {config_file} ({found}) sets no db")
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"setting 'db' (config file {config_file}): expected a string, got {value!r}"
        )
    return DbLocation(value, f"db in {config_file}, from {found}")


def load_config(
    path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Merge defaults, the TOML file, TELEMETRY_* variables and flags (None = not given).

    Raises ConfigError naming the first bad setting.
    """
    env = os.environ if env is None else env
    top: dict[str, object] = {}
    limits: dict[str, object] = {}
    if path is not None:
        data = _read_file(path)
        src = f"config file {path}"
        for key, value in data.items():
            if key == "limits":
                if not isinstance(value, dict):
                    raise ConfigError(f"setting 'limits' ({src}): must be a table")
                for lk, lv in value.items():
                    if lk not in _LIMITS:
                        raise ConfigError(f"setting 'limits.{lk}' ({src}): unknown setting")
                    limits[lk] = _coerce(f"limits.{lk}", _LIMITS[lk].type, lv, src)
            elif key in _TOP:
                top[key] = _coerce(key, _TOP[key].type, value, src)
            else:
                raise ConfigError(f"setting '{key}' ({src}): unknown setting")
    for name, fld in (*_TOP.items(), *_LIMITS.items()):
        var = ENV_PREFIX + name.upper()
        if var in env:
            target = limits if name in _LIMITS else top
            target[name] = _coerce(name, fld.type, env[var], f"environment {var}")
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name in _LIMITS:
            limits[name] = _coerce(name, _LIMITS[name].type, value, "command line")
        elif name in _TOP:
            top[name] = _coerce(name, _TOP[name].type, value, "command line")
        else:
            raise ConfigError(f"setting '{name}': unknown setting")
    cfg = Config(**top, limits=Limits(**limits))  # type: ignore[arg-type]  # coerced per field
    return _check(cfg)


def _check(cfg: Config) -> Config:
    cfg.listen_addr  # noqa: B018  # parses, raising ConfigError
    cfg.http_addr  # noqa: B018
    cfg.forward_addr  # noqa: B018
    cfg.retention_ns  # noqa: B018
    cfg.proxy_networks  # noqa: B018
    sync = cfg.synchronous.upper()
    if sync not in SYNCHRONOUS_MODES:
        raise ConfigError(
            f"setting 'synchronous': expected one of {', '.join(SYNCHRONOUS_MODES)}, "
            f"got {cfg.synchronous!r}"
        )
    level = cfg.log_level.upper()
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"setting 'log_level': expected one of {', '.join(LOG_LEVELS)}, got {cfg.log_level!r}"
        )
    if cfg.kinds is not None and not Path(cfg.kinds).is_file():
        raise ConfigError(f"setting 'kinds': no such file {cfg.kinds!r}")
    if cfg.inputs is not None and not Path(cfg.inputs).is_file():
        raise ConfigError(f"setting 'inputs': no such file {cfg.inputs!r}")
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError("setting 'tls_key': 'tls_cert' and 'tls_key' go together")
    if cfg.tls_client_ca is not None and cfg.tls_cert is None:
        raise ConfigError("setting 'tls_client_ca': mutual TLS needs 'tls_cert' and 'tls_key'")
    if cfg.proxy_protocol and cfg.tls_cert is not None:
        # The header comes before the TLS handshake, which asyncio runs before the handler.
        raise ConfigError(
            "setting 'proxy_protocol': not supported together with TLS on the ingest port "
            "(terminate TLS at the balancer, or run without the PROXY header)"
        )
    if cfg.ingest_workers > MAX_INGEST_WORKERS:
        raise ConfigError(
            f"setting 'ingest_workers': at most {MAX_INGEST_WORKERS}, got {cfg.ingest_workers}"
        )
    if cfg.ingest_workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError(
            "setting 'ingest_workers': more than 1 needs SO_REUSEPORT (Linux); use 1 here"
        )
    lim = cfg.limits
    if lim.max_frame_bytes < MIN_FRAME_BYTES:
        raise ConfigError(
            f"setting 'limits.max_frame_bytes': at least {MIN_FRAME_BYTES} (a HELLO must fit)"
        )
    if lim.max_frame_bytes > wire.MAX_FRAME_BYTES:
        raise ConfigError(
            f"setting 'limits.max_frame_bytes': at most {wire.MAX_FRAME_BYTES} (protocol limit)"
        )
    if lim.idle_timeout_s * 1000 < lim.heartbeat_ms:
        raise ConfigError("setting 'limits.idle_timeout_s': must be at least one heartbeat")
    return dataclasses.replace(cfg, synchronous=sync, log_level=level)
