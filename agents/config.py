"""The agent's TOML configuration: parse, validate, and describe it as frozen dataclasses.

Layout (see deploy/agent.example.toml):

    [agent]       device_id, token | token_file, metrics_interval
    [collector]   address = "host:port" | addresses = ["host:port", ...] (tried in turn),
                  heartbeat_ms, connect_timeout_ms, backoff_initial_ms, backoff_max_ms
    [tls]         enabled, ca_file, cert_file, key_file, server_name
    [batch]       max_readings, max_delay_ms
    [spool]       path, max_readings, policy = "drop-oldest" | "block"
    [[inputs.<source>]]  name | names, kind, unit, interval, tags, plus the source's options

Every error is an `AgentConfigError` whose one-line message names the file, the table and the
key at fault. Source-specific options are checked by the source's own constructor (which
raises `SourceConfigError`); `load_config` only checks that the source name is registered.

I/O: reads the config file, the token file and, with TLS on, the certificate files (loaded
once through `agents.tls` so a bad one is a config error). Imports only the standard library;
`ssl` only when TLS is on (the CLI keeps it out of an agent without TLS).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

SpoolPolicy = Literal["drop-oldest", "block"]
SPOOL_POLICIES: Final = ("drop-oldest", "block")

DEFAULT_PORT: Final = 7878  # the collector's default ingest port
# A batch per second at most by default: one ACK round trip per second is nothing on a
# device, and a reading waits at most this long before it leaves.
DEFAULT_MAX_DELAY_MS: Final = 1000
DEFAULT_BATCH_READINGS: Final = 500
# 100k readings at ~60 bytes each is ~6 MB of SD card: days of a few sensors offline.
DEFAULT_SPOOL_READINGS: Final = 100_000
DEFAULT_INTERVAL_S: Final = 10.0
# Reconnect backoff bounds from issue 4: 0.5 s doubling up to 30 s.
DEFAULT_BACKOFF_INITIAL_MS: Final = 500
DEFAULT_BACKOFF_MAX_MS: Final = 30_000
DEFAULT_CONNECT_TIMEOUT_MS: Final = 10_000

_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_UNITS_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Keys every [[inputs.*]] table may carry; the rest are the source's own options.
COMMON_INPUT_KEYS: Final = frozenset({"name", "names", "kind", "unit", "interval", "tags"})


class AgentConfigError(ValueError):
    """The configuration is invalid; the message is one line naming the table and key."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The `[tls]` table: verify the collector with `ca_file` (system store when unset),
    present `cert_file`/`key_file` for mutual TLS, check the certificate against
    `server_name` (default: the collector address's host)."""

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class InputConfig:
    """One `[[inputs.<source>]]` table."""

    source: str
    index: int
    name: str | None = None
    names: tuple[str, ...] = ()
    kind: str | None = None
    unit: str | None = None
    interval_s: float = DEFAULT_INTERVAL_S
    tags: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How errors and logs name this table: `inputs.file[0]`."""
        return f"inputs.{self.source}[{self.index}]"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    device_id: str
    token: str
    # The first collector address; `collectors` holds all of them, in the order tried.
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    collectors: tuple[tuple[str, int], ...] = ()
    heartbeat_ms: int | None = None
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_MS / 1000
    backoff_initial_s: float = DEFAULT_BACKOFF_INITIAL_MS / 1000
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_MS / 1000
    tls: TlsConfig = TlsConfig()
    batch_max_readings: int = DEFAULT_BATCH_READINGS
    batch_max_delay_s: float = DEFAULT_MAX_DELAY_MS / 1000
    spool_path: Path = Path("agent-spool.db")
    spool_max_readings: int = DEFAULT_SPOOL_READINGS
    spool_policy: SpoolPolicy = "drop-oldest"
    inputs: tuple[InputConfig, ...] = ()
    # Seconds between the agent's own metric readings (`agent/...` sensors); None: off.
    metrics_interval_s: float | None = None
    source_file: Path | None = None

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every collector address, in the order the transport tries them."""
        return self.collectors or ((self.host, self.port),)


def parse_duration_s(value: object) -> float:
    """A duration as seconds: a number (seconds) or a string such as "500ms", "10s", "1m".

    Raises ValueError when the value is neither or is not positive and finite.
    """
    if isinstance(value, bool):
        raise ValueError('must be a duration such as 10 or "10s"')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS_S[m.group(2)]
    else:
        raise ValueError(f'must be a duration such as 10 or "10s", got {value!r}')
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"must be a positive duration, got {value!r}")
    return seconds


def load_config(path: str | Path, *, known_sources: frozenset[str] | None = None) -> AgentConfig:
    """Read and validate the agent's TOML file.

    Raises AgentConfigError naming the file, table and key at fault.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise AgentConfigError(f"{p}: cannot read config: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AgentConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(p), base_dir=p.parent, known_sources=known_sources)


class _Table:
    """Typed, error-naming access to one TOML table; tracks which keys were used."""

    def __init__(self, source: str, name: str, data: object) -> None:
        # Top-level tables print as "[agent]"; input tables as "inputs.file[0]".
        self.where = f"{source}: {name if name.startswith('inputs.') else f'[{name}]'}"
        if not isinstance(data, dict):
            raise AgentConfigError(f"{self.where}: must be a table")
        self.data: dict[str, object] = data

    def err(self, key: str, msg: str) -> AgentConfigError:
        return AgentConfigError(f"{self.where}, key '{key}': {msg}")

    def check_keys(self, allowed: frozenset[str] | set[str]) -> None:
        extra = sorted(set(self.data) - set(allowed))
        if extra:
            raise AgentConfigError(f"{self.where}, key '{extra[0]}': unknown key")

    def str_(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        v = self.data.get(key)
        if v is None:
            if required:
                raise self.err(key, "required")
            return default
        if not isinstance(v, str) or not v:
            raise self.err(key, "must be a non-empty string")
        return v

    def int_(self, key: str, default: int, *, lo: int = 1) -> int:
        v = self.data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise self.err(key, f"must be an integer >= {lo}, got {v!r}")
        return v

    def bool_(self, key: str, default: bool) -> bool:
        v = self.data.get(key, default)
        if not isinstance(v, bool):
            raise self.err(key, f"must be true or false, got {v!r}")
        return v

    def duration(self, key: str, default_s: float) -> float:
        if key not in self.data:
            return default_s
        try:
            return parse_duration_s(self.data[key])
        except ValueError as exc:
            raise self.err(key, str(exc)) from None

    def ms(self, key: str, default_ms: int) -> float:
        return self.int_(key, default_ms) / 1000

    def path(self, key: str, base_dir: Path, default: Path | None = None) -> Path | None:
        v = self.str_(key)
        if v is None:
            return default
        p = Path(v).expanduser()
        return p if p.is_absolute() else base_dir / p


_TOP_KEYS: Final = frozenset({"agent", "collector", "tls", "batch", "spool", "inputs"})


def parse_config(
    data: Mapping[str, object],
    *,
    source: str = "<config>",
    base_dir: Path = Path(),
    known_sources: frozenset[str] | None = None,
) -> AgentConfig:
    """Build an AgentConfig from a parsed TOML document; relative paths resolve in base_dir."""
    extra = sorted(set(data) - _TOP_KEYS)
    if extra:
        raise AgentConfigError(f"{source}: unknown table or key '{extra[0]}'")
    agent = _Table(source, "agent", data.get("agent", {}))
    agent.check_keys({"device_id", "token", "token_file", "metrics_interval"})
    metrics_interval = agent.duration("metrics_interval", 0.0) or None
    device_id = agent.str_("device_id", required=True)
    assert device_id is not None
    token = _token(agent, base_dir)

    coll = _Table(source, "collector", data.get("collector", {}))
    coll.check_keys(
        {
            "address",
            "addresses",
            "heartbeat_ms",
            "connect_timeout_ms",
            "backoff_initial_ms",
            "backoff_max_ms",
        }
    )
    collectors = _addresses(coll)
    host, port = collectors[0]
    heartbeat_ms = coll.int_("heartbeat_ms", 0, lo=0) or None
    backoff_initial = coll.ms("backoff_initial_ms", DEFAULT_BACKOFF_INITIAL_MS)
    backoff_max = coll.ms("backoff_max_ms", DEFAULT_BACKOFF_MAX_MS)
    if backoff_max < backoff_initial:
        raise coll.err("backoff_max_ms", "must not be less than backoff_initial_ms")

    tls = _tls(_Table(source, "tls", data.get("tls", {})), base_dir)

    batch = _Table(source, "batch", data.get("batch", {}))
    batch.check_keys({"max_readings", "max_delay_ms"})
    max_readings = batch.int_("max_readings", DEFAULT_BATCH_READINGS)
    # The wire limit: a larger batch would be refused by every collector.
    if max_readings > 10_000:
        raise batch.err("max_readings", "must be at most 10000 (the protocol's batch limit)")

    spool = _Table(source, "spool", data.get("spool", {}))
    spool.check_keys({"path", "max_readings", "policy"})
    policy = spool.str_("policy", "drop-oldest")
    if policy not in SPOOL_POLICIES:
        raise spool.err("policy", f"must be one of {', '.join(SPOOL_POLICIES)}, got {policy!r}")
    spool_path = spool.path("path", base_dir, base_dir / "agent-spool.db")
    assert spool_path is not None

    return AgentConfig(
        device_id=device_id,
        token=token,
        metrics_interval_s=metrics_interval,
        host=host,
        port=port,
        collectors=collectors,
        heartbeat_ms=heartbeat_ms,
        connect_timeout_s=coll.ms("connect_timeout_ms", DEFAULT_CONNECT_TIMEOUT_MS),
        backoff_initial_s=backoff_initial,
        backoff_max_s=backoff_max,
        tls=tls,
        batch_max_readings=max_readings,
        batch_max_delay_s=batch.ms("max_delay_ms", DEFAULT_MAX_DELAY_MS),
        spool_path=spool_path,
        spool_max_readings=spool.int_("max_readings", DEFAULT_SPOOL_READINGS),
        spool_policy="block" if policy == "block" else "drop-oldest",
        inputs=_inputs(data.get("inputs", {}), source, known_sources),
        source_file=Path(source) if source != "<config>" else None,
    )


def _token(agent: _Table, base_dir: Path) -> str:
    token = agent.str_("token")
    token_file = agent.path("token_file", base_dir)
    if token is not None and token_file is not None:
        raise agent.err("token_file", "give either 'token' or 'token_file', not both")
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise agent.err("token_file", f"cannot read {token_file}: {exc.strerror}") from None
        if not token:
            raise agent.err("token_file", f"{token_file} is empty")
    if token is None:
        raise agent.err("token", "required (or 'token_file')")
    return token


def _addresses(coll: _Table) -> tuple[tuple[str, int], ...]:
    """`address = "host:port"`, or `addresses = [...]` for failover without a balancer."""
    listed = coll.data.get("addresses")
    if listed is None:
        address = coll.str_("address", f"127.0.0.1:{DEFAULT_PORT}")
        assert address is not None
        return (_address(coll, "address", address),)
    if "address" in coll.data:
        raise coll.err("addresses", "give either 'address' or 'addresses', not both")
    if not isinstance(listed, list) or not listed or not all(isinstance(a, str) for a in listed):
        raise coll.err("addresses", f'must be a list of "host:port" strings, got {listed!r}')
    out = tuple(_address(coll, "addresses", a) for a in listed)
    if len(set(out)) != len(out):
        raise coll.err("addresses", "lists an address twice")
    return out


def _address(coll: _Table, key: str, address: str) -> tuple[str, int]:
    host, sep, port_s = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise coll.err(key, f'must be "host:port", got {address!r}')
    return host, int(port_s)


def _tls(t: _Table, base_dir: Path) -> TlsConfig:
    t.check_keys({"enabled", "ca_file", "cert_file", "key_file", "server_name"})
    cfg = TlsConfig(
        enabled=t.bool_("enabled", False),
        ca_file=t.path("ca_file", base_dir),
        cert_file=t.path("cert_file", base_dir),
        key_file=t.path("key_file", base_dir),
        server_name=t.str_("server_name"),
    )
    if (cfg.cert_file is None) != (cfg.key_file is None):
        raise t.err("key_file", "'cert_file' and 'key_file' go together")
    if not cfg.enabled:
        return cfg
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(cfg, key)
        if path is not None and not path.is_file():
            raise t.err(key, f"no such file {path}")
    from agents.tls import client_context  # imports ssl: only when TLS is on

    try:
        client_context(cfg.ca_file, cfg.cert_file, cfg.key_file)
    except OSError as exc:  # ssl.SSLError is an OSError
        detail = getattr(exc, "reason", None) or exc.strerror or exc
        key = "cert_file" if cfg.cert_file is not None and _loads_as_ca(cfg.ca_file) else "ca_file"
        raise t.err(key, f"cannot load TLS file: {detail}") from None
    return cfg


def _loads_as_ca(ca_file: Path | None) -> bool:
    """True when the CA file (or the system trust store) loads on its own."""
    from agents.tls import client_context

    try:
        client_context(ca_file)
    except OSError:
        return False
    return True


def _inputs(
    raw: object, source: str, known_sources: frozenset[str] | None
) -> tuple[InputConfig, ...]:
    if not isinstance(raw, dict):
        raise AgentConfigError(f"{source}: 'inputs' must hold [[inputs.<source>]] tables")
    out: list[InputConfig] = []
    for src_name, tables in raw.items():
        if known_sources is not None and src_name not in known_sources:
            known = ", ".join(sorted(known_sources))
            raise AgentConfigError(
                f"{source}: [[inputs.{src_name}]]: unknown source {src_name!r} (known: {known})"
            )
        if not isinstance(tables, list):
            raise AgentConfigError(
                f"{source}: [inputs.{src_name}] must be an array of tables: [[inputs.{src_name}]]"
            )
        for i, table in enumerate(tables):
            out.append(_input(src_name, i, _Table(source, f"inputs.{src_name}[{i}]", table)))
    return tuple(out)


def _input(src: str, index: int, t: _Table) -> InputConfig:
    names_raw = t.data.get("names", [])
    if not isinstance(names_raw, list) or not all(isinstance(n, str) and n for n in names_raw):
        raise t.err("names", "must be a list of non-empty strings")
    tags_raw = t.data.get("tags", {})
    if not isinstance(tags_raw, dict) or not all(isinstance(v, str) for v in tags_raw.values()):
        raise t.err("tags", 'must be a table of strings, e.g. { room = "lab" }')
    if "name" in t.data and names_raw:
        raise t.err("names", "give either 'name' or 'names', not both")
    return InputConfig(
        source=src,
        index=index,
        name=t.str_("name"),
        names=tuple(names_raw),
        kind=t.str_("kind"),
        unit=t.str_("unit"),
        interval_s=t.duration("interval", DEFAULT_INTERVAL_S),
        tags=dict(tags_raw),
        options={k: v for k, v in t.data.items() if k not in COMMON_INPUT_KEYS},
    )
