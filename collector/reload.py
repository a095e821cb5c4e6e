"""SIGHUP for the collector daemon: reload what can change without dropping a connection.

Applied at once, open connections included:
* user-defined kinds: the `kinds` file is read again (also when its name is unchanged) and
  every batch from now on, on old connections and new, is validated against it;
* `log_level` (the daemon's; the maintenance process takes it at its next start);
* `allow_unknown_devices` (read at every HELLO).
Applied to new connections, open ones keep theirs:
* TLS certificate, key and client CA: the files are read again and a new context is used
  from the next handshake on (`collector.tls.SwappableContext`).
Device tokens need nothing: every HELLO reads the registry in the database, so `telemetry
devices add|revoke` takes effect at a device's next HELLO without a reload.

Everything else (`listen`, `http`, `db`, `synchronous`, `http_token`, `retention`, the
`[limits]`, and turning TLS on, off or mutual) needs a restart: the reload line names what
changed and was not applied, and those settings keep their running values.

A config that does not load or check keeps the running one, with one ERROR line; the daemon
never exits on SIGHUP. `load` runs in a worker thread (it reads files and builds the
validator and TLS context); `Reloader.apply` runs on the event loop. No sockets here.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from collector.config import Config, Limits
from collector.ingest.prepare import Ingest
from collector.ingest.server import Server
from collector.ingest.writer import Writer
from collector.tls import SwappableContext, files_digest
from schemas.kinds import KindSpec

log = logging.getLogger(__name__)

# Settings a running daemon cannot change; `kinds`, `log_level`, `allow_unknown_devices`
# and the TLS files are reloaded.
RESTART_ONLY = (
    "listen",
    "http",
    "db",
    "synchronous",
    "http_token",
    "retention",
    "proxy_protocol",
    "proxy_protocol_from",
    "ingest_workers",
)
# Shown as "changed", never by value.
SECRET = frozenset({"http_token"})


@dataclass(frozen=True, slots=True)
class Loaded:
    """A config read and checked in full, with what it takes to apply it."""

    cfg: Config
    kinds: tuple[KindSpec, ...]
    ingest: Ingest
    tls: ssl.SSLContext | None
    tls_digest: str


def tls_digest(cfg: Config) -> str:
    """Fingerprint of the TLS files' contents ('' when TLS is off)."""
    if cfg.tls_mode == "off":
        return ""
    return files_digest((cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca))


def load(read: Callable[[], Config]) -> Loaded:
    """Read the config again and check it as start-up does. Raises ConfigError."""
    # Imported here: the daemon and collector.ingestpath import this module.
    from collector.daemon import check_config
    from collector.ingestpath import tls_context

    cfg = read()
    kinds = check_config(cfg)
    from schemas.readings import ReadingValidator

    return Loaded(cfg, kinds, Ingest(ReadingValidator(kinds)), tls_context(cfg), tls_digest(cfg))


class Reloader:
    """Holds what the daemon runs with and applies a newly loaded config to it."""

    def __init__(
        self,
        cfg: Config,
        kinds: tuple[KindSpec, ...],
        server: Server,
        writer: Writer,
        tls: SwappableContext | None,
    ) -> None:
        self.cfg = cfg
        self.kinds = kinds
        self.server = server
        self.writer = writer
        self.tls = tls
        self._tls_digest = tls_digest(cfg)

    def apply(self, new: Loaded) -> str:
        """Apply what can change now; returns the one-line summary the daemon logs."""
        cur = self.cfg
        done: list[str] = []
        if new.kinds != self.kinds:
            self.server.ingest = new.ingest
            done.append("kinds " + _kinds_diff(self.kinds, new.kinds))
            self.kinds = new.kinds
        keep: dict[str, object] = {"kinds": new.cfg.kinds}
        not_applied = _restart_only(cur, new.cfg)
        if new.cfg.tls_mode != cur.tls_mode:
            not_applied.append(f"tls {cur.tls_mode} -> {new.cfg.tls_mode}")
        elif new.tls is not None and self.tls is not None:
            paths = (cur.tls_cert, cur.tls_key, cur.tls_client_ca)
            new_paths = (new.cfg.tls_cert, new.cfg.tls_key, new.cfg.tls_client_ca)
            if new.tls_digest != self._tls_digest or paths != new_paths:
                self.tls.replace(new.tls)
                self._tls_digest = new.tls_digest
                done.append("tls certificates replaced (for new connections)")
            keep |= {"tls_cert": new_paths[0], "tls_key": new_paths[1]}
            keep |= {"tls_client_ca": new_paths[2]}
        if new.cfg.allow_unknown_devices != cur.allow_unknown_devices:
            self.writer.allow_unknown_devices = new.cfg.allow_unknown_devices
            done.append(
                f"allow_unknown_devices {_show(cur.allow_unknown_devices)} -> "
                f"{_show(new.cfg.allow_unknown_devices)}"
            )
            keep["allow_unknown_devices"] = new.cfg.allow_unknown_devices
        level = new.cfg.log_level if new.cfg.log_level != cur.log_level else None
        if level is not None:
            done.append(f"log_level {cur.log_level} -> {level}")
            keep["log_level"] = level
        self.cfg = dataclasses.replace(cur, **keep)  # type: ignore[arg-type]  # Config fields
        summary = "; ".join(done) if done else "nothing changed"
        if not_applied:
            summary += "; not applied, needs a restart: " + ", ".join(not_applied)
        # Logged before a new level applies, so "log_level INFO -> WARNING" is still seen.
        log.info("reloaded config: %s", summary)
        if level is not None:
            logging.getLogger().setLevel(level)
        return summary


def _restart_only(cur: Config, new: Config) -> list[str]:
    out: list[str] = []
    for name in RESTART_ONLY:
        a, b = getattr(cur, name), getattr(new, name)
        if a != b:
            out.append(f"{name} changed" if name in SECRET else f"{name} {_show(a)} -> {_show(b)}")
    for f in dataclasses.fields(Limits):
        a, b = getattr(cur.limits, f.name), getattr(new.limits, f.name)
        if a != b:
            out.append(f"limits.{f.name} {_show(a)} -> {_show(b)}")
    return out


def _show(v: object) -> str:
    if v is None:
        return "unset"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _kinds_diff(old: tuple[KindSpec, ...], new: tuple[KindSpec, ...]) -> str:
    before = {k.name: k for k in old}
    after = {k.name: k for k in new}
    parts = [f"+{n}" for n in sorted(after.keys() - before.keys())]
    parts += [f"-{n}" for n in sorted(before.keys() - after.keys())]
    parts += [f"~{n}" for n in sorted(after.keys() & before.keys()) if after[n] != before[n]]
    return " ".join(parts)
