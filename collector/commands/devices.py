"""`telemetry devices`: add a device (printing its token once), list, revoke.

Works on the database file directly: the collector's, found like the read commands find it
(`--db`, TELEMETRY_DB, the `db` setting of `--config FILE` / TELEMETRY_CONFIG /
/etc/telemetry/collector.toml, else ./telemetry.db; `collector.commands.options.database`),
named on stderr by the commands that write. `add` migrates the file, and creates it only
with `--create` (so devices can be registered before the collector first starts, but a
mistyped or misfound path is an error rather than a new empty database). The running
collector sees a change at the device's next HELLO. Registry logic is the
storage's (`collector.storage.interface.Storage`: add_device, revoke_device,
list_devices).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import click

from collector.commands.options import config_option, database, db_option, missing
from collector.config import DbLocation
from collector.errors import ConfigError
from collector.storage.factory import open_storage
from collector.storage.interface import DeviceError, Filters, Storage, StorageError

FORMATS = ("table", "csv", "json", "jsonl")
_db_option = db_option("SQLite database file")


_NAME_IT = "name the collector's with --db PATH or --config FILE"


def _open(loc: DbLocation, *, create: bool | None = None, remedy: str = "") -> Storage:
    """Open (and migrate) the registry's database; `create`: None when the command cannot
    create one, else whether it was asked to."""
    db = loc.path
    if not create and "://" not in db and not Path(db).exists():
        if create is False:
            remedy = (
                f"{_NAME_IT}, or add --create to make a new one here (the collector also "
                "creates it at its first start)"
            )
        raise missing(loc, remedy or _NAME_IT)
    try:
        return open_storage(db)
    except StorageError as exc:
        raise ConfigError(f"option '--db': {exc}") from None


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
@config_option
@_format_option
@_url_option
@_token_option
@click.pass_context
def devices_group(
    ctx: click.Context,
    db: str | None,
    config_file: str | None,
    fmt: str,
    url: str | None,
    token: str | None,
) -> None:
    """Manage the devices allowed to send readings; alone, list them (like `devices list`)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_cmd, db=db, config_file=config_file, fmt=fmt, url=url, token=token)


@devices_group.command("add")
@click.argument("name")
@_db_option
@config_option
@click.option(
    "--create",
    is_flag=True,
    help="Create the database when it does not exist yet (before the collector's first start).",
)
def add(name: str, db: str | None, config_file: str | None, create: bool) -> None:
    """Register device NAME and print its token (shown only this once)."""
    storage = _open(database(db, config_file, writes=True), create=create)
    try:
        _, token = storage.add_device(name, time.time_ns())
    except DeviceError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        storage.close()
    click.echo(token)
    click.echo(
        f"device {name!r} added; the token above is shown only once: "
        "store it in the agent's config",
        err=True,
    )


@devices_group.command("revoke")
@click.argument("name")
@_db_option
@config_option
def revoke(name: str, db: str | None, config_file: str | None) -> None:
    """Revoke device NAME: its next HELLO is refused; stored readings stay."""
    storage = _open(database(db, config_file, writes=True))
    try:
        storage.revoke_device(name, time.time_ns())
    except DeviceError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        storage.close()
    click.echo(f"device {name!r} revoked", err=True)


@devices_group.command("list")
@_db_option
@config_option
@_format_option
@_url_option
@_token_option
def list_cmd(
    db: str | None, config_file: str | None, fmt: str, url: str | None, token: str | None
) -> None:
    """List registered devices: last seen, readings stored, revocation."""
    if url is not None:
        click.echo(_render(_fetch(url, token), fmt), nl=False)
        return
    # Listing never creates a database at a mistyped path.
    storage = _open(database(db, config_file), remedy=f"{_NAME_IT}, or --url")
    try:
        rows = storage.list_devices()
        totals: dict[str, tuple[int, int]] = {}
        for s in storage.resolve_series(Filters()):
            n, k = totals.get(s.device, (0, 0))
            totals[s.device] = (n + s.count, k + 1)
    finally:
        storage.close()
    records = [
        {
            "device": d.name,
            "id": d.id,
            "created": _iso(d.created_ns),
            "revoked": _iso(d.revoked_ns) or None,
            "last_seen": _iso(d.last_seen_ns) or None,
            "last_seq": d.last_seq,
            "readings": totals.get(d.name, (0, 0))[0],
            "series": totals.get(d.name, (0, 0))[1],
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
