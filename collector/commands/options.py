"""What the read commands (collector.commands.query) share: their options and what the
options parse to.

`--db/--config/--url/--token` (where to read: `database` finds the collector's database as
`collector.config.locate_db` says and names it on stderr), `--format`, the series filters
(`--device`, `--sensor`, `--kind`, `--tag`, `--field`) and the time range
(`--since/--until`), parsed by `collector.query.readings` so the CLI and the HTTP API accept the
same forms and fail the same way; and the read-only connection behind `--db`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypeVar

import click

from collector.config import DEFAULT_CONFIG_FILE, DbLocation, locate_db
from collector.errors import ConfigError
from collector.query import formats
from collector.query import readings as ql
from collector.storage.factory import open_storage
from collector.storage.interface import Storage, StorageError

F = TypeVar("F", bound=Callable[..., object])


def source_options(fn: F) -> F:
    fn = click.option(
        "--token",
        envvar="TELEMETRY_TOKEN",
        help="Read token for --url (env TELEMETRY_TOKEN).",
    )(fn)
    fn = click.option(
        "--url",
        metavar="URL",
        help="Ask a running collector's HTTP API (e.g. http://127.0.0.1:7879) instead of --db.",
    )(fn)
    fn = config_option(fn)
    fn = db_option("Database file to read")(fn)
    return fn


DB_HELP = (
    "(default: env TELEMETRY_DB, else the db setting of the collector's config file, "
    "else ./telemetry.db)."
)


def db_option(what: str) -> Callable[[F], F]:
    """`--db PATH`; unset, `database()` finds the collector's database."""
    return click.option("--db", "db", metavar="PATH", help=f"{what} {DB_HELP}")


def config_option(fn: F) -> F:
    return click.option(
        "--config",
        "config_file",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help="The collector's config file: use the database its db setting names "
        f"(default: env TELEMETRY_CONFIG, else {DEFAULT_CONFIG_FILE} when present).",
    )(fn)


def database(db: str | None, config_file: str | None, *, writes: bool = False) -> DbLocation:
    """The database to open; one stderr line names it when it came from a config file or
    the environment, and always for a command that writes (stdout stays data only)."""
    loc = locate_db(db, config_file)
    if writes or loc.source not in ("--db", "default"):
        ctx = click.get_current_context(silent=True)
        prefix = ctx.command_path if ctx is not None else "telemetry"
        click.echo(f"{prefix}: database {os.path.abspath(loc.path)} ({loc.source})", err=True)
    return loc


def format_option(
    choices: Sequence[str] = formats.FORMATS, default: str | None = None
) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        return click.option(
            "--format",
            "fmt",
            type=click.Choice(list(choices)),
            default=default,
            help="Output format (default: table on a terminal, jsonl otherwise)."
            if default is None
            else f"Output format (default: {default}).",
        )(fn)

    return deco


def filter_options(fn: F) -> F:
    fn = click.option(
        "--field",
        "fields",
        multiple=True,
        metavar="NAME",
        help="Field of a composite kind (gps: lat, lon, alt). Repeatable.",
    )(fn)
    fn = click.option(
        "--tag",
        "tags",
        multiple=True,
        metavar="K=V",
        help="Only series with this tag. Repeatable (all must match).",
    )(fn)
    fn = click.option(
        "--kind",
        "kinds",
        multiple=True,
        metavar="KIND",
        help="Sensor kind (temperature, gps, ...). Repeatable.",
    )(fn)
    fn = click.option(
        "--sensor",
        "sensors",
        multiple=True,
        metavar="GLOB",
        help="Sensor name glob, e.g. 'air-*'. Repeatable.",
    )(fn)
    fn = click.option(
        "--device",
        "devices",
        multiple=True,
        metavar="GLOB",
        help="Device name glob, e.g. 'greenhouse-*'. Repeatable.",
    )(fn)
    return fn


def range_options(fn: F) -> F:
    fn = click.option(
        "--until", metavar="TIME", help="End of the range, exclusive (same forms as --since)."
    )(fn)
    fn = click.option(
        "--since",
        metavar="TIME",
        help="Start of the range, inclusive: 15m, 2h, 7d (ago), now, "
        "2026-11-25T10:00:00Z, 2026-11-25 (UTC unless an offset is given).",
    )(fn)
    return fn


@dataclass(frozen=True, slots=True)
class TimeRange:
    since: int | None
    until: int | None


def filters(
    devices: tuple[str, ...],
    sensors: tuple[str, ...],
    kinds: tuple[str, ...],
    tags: tuple[str, ...],
    fields: tuple[str, ...],
) -> ql.Filters:
    return ql.Filters(
        devices=devices,
        sensors=sensors,
        kinds=kinds,
        fields=fields,
        tags=tuple(ql.parse_tag(t) for t in tags),
    )


def time_range(since: str | None, until: str | None) -> TimeRange:
    now = ql.now_ns()
    lo = None if since is None else ql.parse_time(since, option="--since", now_ns=now)
    hi = None if until is None else ql.parse_time(until, option="--until", now_ns=now)
    if lo is not None and hi is not None and lo >= hi:
        raise ConfigError("--until: must be after --since")
    return TimeRange(lo, hi)


def missing(
    loc: DbLocation,
    remedy: str = "give --db PATH, --config FILE (the collector's config) or --url",
) -> ConfigError:
    """The error for a database file that does not exist, saying where it was looked for."""
    how = loc.source
    if loc.from_default:
        how = (
            "default; nothing set by --db, TELEMETRY_DB, --config, TELEMETRY_CONFIG or "
            f"{DEFAULT_CONFIG_FILE}"
        )
    return ConfigError(f"--db: no database at {loc.path} ({how}); {remedy}")


def open_db(loc: DbLocation | str, *, writes: bool = False) -> Storage:
    """The storage the location names, read-only unless `writes`. Raises ConfigError."""
    if isinstance(loc, str):
        loc = DbLocation(loc, "--db")
    db = loc.path
    if "://" not in db and not Path(db).is_file():
        raise missing(loc)
    try:
        return open_storage(db, readonly=not writes)
    except StorageError as exc:
        raise ConfigError(f"--db: {exc}") from None


def out_format(fmt: str | None, out: TextIO) -> str:
    return fmt if fmt is not None else formats.default_format(out)
