"""`telemetry devices`: add a device (printing its token once), list, revoke.

Works on the database file directly (`--db`, default ./telemetry.db), creating and migrating
it when needed, so devices can be registered before the collector first starts. The running
collector sees a change at the device's next HELLO. Registry logic is
`collector.storage.sqlite.devices`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sqlite3
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import click

from collector.config import DEFAULT_DB
from collector.errors import ConfigError
from collector.storage.sqlite import devices as registry
from collector.storage.sqlite import store

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


_format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True
)
_url_option = click.option(
    "--url",
    help="Ask a running collector's HTTP address (e.g. http://127.0.0.1:7879) instead of "
    "reading the file; only it knows which devices are connected.",
)
_token_option = click.option(
    "--token", envvar="TELEMETRY_TOKEN", help="Read token for --url (env TELEMETRY_TOKEN)."
)


@click.group(
    "devices",
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@_db_option
@_format_option
@_url_option
@_token_option
@click.pass_context
def devices_group(
    ctx: click.Context, db: str, fmt: str, url: str | None, token: str | None
) -> None:
    """Manage the devices allowed to send readings; alone, list them (like `devices list`)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_cmd, db=db, fmt=fmt, url=url, token=token)


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
@_format_option
@_url_option
@_token_option
def list_cmd(db: str, fmt: str, url: str | None, token: str | None) -> None:
    """List registered devices: last seen, readings stored, revocation."""
    if url is not None:
        click.echo(_render(_fetch(url, token), fmt), nl=False)
        return
    if not Path(db).exists():
        # Listing must not create an empty database at a mistyped path.
        raise ConfigError(f"option '--db': no database at {db} (give --db PATH or --url)")
    conn = _open(db)
    try:
        rows = registry.list_devices(conn)
        totals = {
            dev: (int(n or 0), int(k))
            for dev, n, k in conn.execute(
                f"SELECT device_id, sum(count), count(*) FROM {store.SERIES} GROUP BY device_id"
            )
        }
    finally:
        conn.close()
    records = [
        {
            "device": d.name,
            "id": d.id,
            "created": _iso(d.created_ns),
            "revoked": _iso(d.revoked_ns) or None,
            "last_seen": _iso(d.last_seen_ns) or None,
            "last_seq": d.last_seq,
            "readings": totals.get(d.id, (0, 0))[0],
            "series": totals.get(d.id, (0, 0))[1],
            "spool_dropped": d.spool_dropped,
        }
        for d in rows
    ]
    click.echo(_render(records, fmt), nl=False)


def _fetch(url: str, token: str | None) -> list[dict[str, object]]:
    target = url.rstrip("/") + "/api/v1/devices"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(target, headers=headers), timeout=10
        ) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"option '--url': cannot read {target}: {exc}") from None
    rows = body.get("devices") if isinstance(body, dict) else None
    if not isinstance(rows, list):
        raise ConfigError(f"option '--url': {target} did not answer a device list")
    return [r for r in rows if isinstance(r, dict)]


def _render(records: Sequence[Mapping[str, object]], fmt: str) -> str:
    cols = list(dict.fromkeys(k for r in records for k in r)) or ["device"]
    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(records)
        return buf.getvalue()
    cells = [[_cell(r.get(c)) for c in cols] for r in records]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines) + "\n"


def _cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, dict | list):
        return json.dumps(v)
    return str(v)


devices = devices_group
