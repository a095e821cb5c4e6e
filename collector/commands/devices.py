"""`telemetry devices`: add a device (printing its token once), list, revoke.

Works on the database file directly (`--db`, default ./telemetry.db), creating and migrating
it when needed, so devices can be registered before the collector first starts. The running
collector sees a change at the device's next HELLO. Registry logic is `collector.devices`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence

import click

from collector import devices as registry
from collector import store
from collector.config import DEFAULT_DB
from collector.errors import ConfigError

FORMATS = ("table", "csv", "json", "jsonl")
_db_option = click.option(
    "--db",
    default=DEFAULT_DB,
    show_default=True,
    envvar="TELEMETRY_DB",
    help="SQLite database file.",
)


def _open(db: str) -> sqlite3.Connection:
    try:
        store.migrate(db)
        return store.connect(db)
    except (sqlite3.Error, OSError) as exc:
        raise ConfigError(f"option '--db': cannot open database {db!r}: {exc}") from None


def _iso(ns: int | None) -> str:
    if ns is None:
        return ""
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat(timespec="seconds")


@click.group("devices", context_settings={"help_option_names": ["-h", "--help"]})
def devices_group() -> None:
    """Manage the devices allowed to send readings."""


@devices_group.command("add")
@click.argument("name")
@_db_option
def add(name: str, db: str) -> None:
    """Register device NAME and print its token (shown only this once)."""
    conn = _open(db)
    try:
        _, token = registry.add_device(conn, name, time.time_ns())
    except registry.DeviceError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        conn.close()
    click.echo(token)
    click.echo(
        f"device {name!r} added; the token above is shown only once: "
        "store it in the agent's config",
        err=True,
    )


@devices_group.command("revoke")
@click.argument("name")
@_db_option
def revoke(name: str, db: str) -> None:
    """Revoke device NAME: its next HELLO is refused; stored readings stay."""
    conn = _open(db)
    try:
        registry.revoke_device(conn, name, time.time_ns())
    except registry.DeviceError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        conn.close()
    click.echo(f"device {name!r} revoked", err=True)


@devices_group.command("list")
@_db_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
def list_cmd(db: str, fmt: str) -> None:
    """List registered devices."""
    conn = _open(db)
    try:
        rows = registry.list_devices(conn)
    finally:
        conn.close()
    records = [
        {
            "device": d.name,
            "id": d.id,
            "created": _iso(d.created_ns),
            "revoked": _iso(d.revoked_ns) or None,
            "last_seq": d.last_seq,
            "last_seen": _iso(d.last_seen_ns) or None,
            "spool_dropped": d.spool_dropped,
        }
        for d in rows
    ]
    click.echo(_render(records, fmt), nl=False)


def _render(records: Sequence[Mapping[str, object]], fmt: str) -> str:
    cols = ["device", "id", "created", "revoked", "last_seq", "last_seen", "spool_dropped"]
    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(records)
        return buf.getvalue()
    cells = [[("" if r[c] is None else str(r[c])) for c in cols] for r in records]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines) + "\n"


devices = devices_group
