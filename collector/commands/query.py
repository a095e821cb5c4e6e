"""The read-side commands: `telemetry query`, `series`, `tail`, `rejected` and `export`.

Each reads the database file directly (`--db`, or the one the collector's config names:
`collector.commands.options.database`; read-only connection: never blocks ingest)
or a running collector's HTTP API (`--url`, through the small client in
`collector.commands.remote`), and prints through `collector.query.formats`. The options they share
and their parsing (`collector.query.readings`'s, so the CLI and the HTTP API accept the same forms
and fail the same way) are in `collector.commands.options`.

Must not: hold the write lock (only `rejected --replay` writes, through
`Storage.replay_rejected`), or buffer a whole export in memory.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Final, TextIO

import click

from collector.commands.options import (
    database,
    filter_options,
    filters,
    format_option,
    open_db,
    out_format,
    range_options,
    source_options,
    time_range,
)
from collector.commands.remote import Remote, filter_params, range_params
from collector.config import DbLocation
from collector.errors import ConfigError
from collector.query import formats
from collector.query import readings as ql
from collector.storage.interface import RejectedFilter

# How often `tail` looks for new commits when reading the file (one PRAGMA when idle).
TAIL_POLL_S: Final = 0.25


# ---------------------------------------------------------------- commands


@click.command("query")
@filter_options
@range_options
@click.option("--latest", is_flag=True, help="Only the last reading of each series.")
@click.option(
    "--every", metavar="DURATION", help="Bucket width for aggregates, e.g. 5m (needs --agg)."
)
@click.option(
    "--agg", metavar="FUNC", help=f"Aggregate per bucket: {', '.join(ql.AGGS)} (needs --every)."
)
@click.option("--limit", type=int, metavar="N", help="At most N rows.")
@click.option("--order", default="asc", show_default=True, metavar="asc|desc", help="Time order.")
@format_option()
@source_options
def query(
    devices: tuple[str, ...],
    sensors: tuple[str, ...],
    kinds: tuple[str, ...],
    tags: tuple[str, ...],
    fields: tuple[str, ...],
    since: str | None,
    until: str | None,
    latest: bool,
    every: str | None,
    agg: str | None,
    limit: int | None,
    order: str,
    fmt: str | None,
    db: str | None,
    config_file: str | None,
    url: str | None,
    token: str | None,
) -> None:
    """Print stored readings, latest values or time-bucketed aggregates.

    \b
    Examples:
      telemetry query --device 'greenhouse-*' --sensor air-temp --since 2h
      telemetry query --latest --kind temperature
      telemetry query --sensor air-temp --since 7d --every 1h --agg avg
      telemetry query --kind gps --field lat --since 15m --format csv
    """
    f = filters(devices, sensors, kinds, tags, fields)
    r = time_range(since, until)
    ordr = ql.parse_order(order)
    if limit is not None:
        ql.parse_limit(limit)
    if every is not None and agg is None:
        raise ConfigError("--every: needs --agg (one of " + ", ".join(ql.AGGS) + ")")
    if agg is not None and every is None:
        raise ConfigError("--agg: needs --every (a bucket width such as 5m)")
    every_ns = None if every is None else ql.parse_duration(every, option="--every")
    aggf = None if agg is None else ql.parse_agg(agg)
    if latest and every_ns is not None:
        raise ConfigError("--latest: cannot be combined with --every/--agg")
    out = sys.stdout
    fmt = out_format(fmt, out)
    columns = ql.AGGREGATE_COLUMNS if aggf else ql.READING_COLUMNS
    if url is not None:
        remote = Remote(url, token)
        params = filter_params(f) + range_params(r.since, r.until)
        if latest:
            data = remote.get("latest", params)
            rows_l = data.get("readings")
            assert isinstance(rows_l, list)
            formats.write_rows(rows_l[:limit] if limit else rows_l, columns, fmt, out)
            return
        params.append(("order", ordr))
        if every_ns is not None and aggf is not None:
            params += [("every", f"{every_ns}ns"), ("agg", aggf)]
            formats.write_rows(
                remote.rows("aggregate", "aggregates", params, limit), columns, fmt, out
            )
        else:
            formats.write_rows(
                remote.rows("readings", "readings", params, limit), columns, fmt, out
            )
        return
    storage = open_db(database(db, config_file))
    try:
        series = ql.resolve_series(storage, f)
        if latest:
            rows_latest = ql.latest(storage, series, r.since, r.until)
            formats.write_rows(rows_latest[:limit] if limit else rows_latest, columns, fmt, out)
        elif every_ns is not None and aggf is not None:
            formats.write_rows(
                ql.aggregates(
                    storage, series, r.since, r.until, every_ns, aggf, order=ordr, limit=limit
                ),
                columns,
                fmt,
                out,
            )
        else:
            formats.write_rows(
                ql.readings(storage, series, r.since, r.until, order=ordr, limit=limit),
                columns,
                fmt,
                out,
            )
    finally:
        storage.close()


@click.command()
@filter_options
@format_option()
@source_options
def series(
    devices: tuple[str, ...],
    sensors: tuple[str, ...],
    kinds: tuple[str, ...],
    tags: tuple[str, ...],
    fields: tuple[str, ...],
    fmt: str | None,
    db: str | None,
    config_file: str | None,
    url: str | None,
    token: str | None,
) -> None:
    """List series: device, sensor, field, kind, unit, tags, first/last timestamp, count."""
    f = filters(devices, sensors, kinds, tags, fields)
    out = sys.stdout
    fmt = out_format(fmt, out)
    if url is not None:
        data = Remote(url, token).get("series", filter_params(f))
        rows = data.get("series")
        assert isinstance(rows, list)
    else:
        storage = open_db(database(db, config_file))
        try:
            rows = [ql.series_row(s) for s in ql.resolve_series(storage, f)]
        finally:
            storage.close()
    formats.write_rows(rows, ql.SERIES_COLUMNS, fmt, out)


@click.command()
@filter_options
@click.option("--count", "max_rows", type=int, metavar="N", help="Exit after N readings.")
@click.option("--for", "duration", metavar="DURATION", help="Exit after this long, e.g. 30s.")
@format_option()
@source_options
def tail(
    devices: tuple[str, ...],
    sensors: tuple[str, ...],
    kinds: tuple[str, ...],
    tags: tuple[str, ...],
    fields: tuple[str, ...],
    max_rows: int | None,
    duration: str | None,
    fmt: str | None,
    db: str | None,
    config_file: str | None,
    url: str | None,
    token: str | None,
) -> None:
    """Follow readings live as they are committed (only those committed after it starts).

    Stop with Ctrl-C, --count or --for. Readings that arrive older than their series'
    newest stored reading (out of order within one series) are not shown.
    """
    f = filters(devices, sensors, kinds, tags, fields)
    if max_rows is not None:
        ql.parse_limit(max_rows, option="--count")
    deadline = None
    if duration is not None:
        deadline = time.monotonic() + ql.parse_duration(duration, option="--for") / 1e9
    out = sys.stdout
    fmt = out_format(fmt, out)
    writer = formats.RowWriter(fmt, ql.READING_COLUMNS, out)

    def emit(rows: Sequence[ql.Row]) -> bool:
        if max_rows is not None:
            rows = rows[: max_rows - writer.count]
        for row in rows:
            writer.write(row)
        out.flush()
        return max_rows is not None and writer.count >= max_rows

    try:
        if url is not None:
            _tail_remote(Remote(url, token), f, emit, deadline)
        else:
            _tail_file(database(db, config_file), f, emit, deadline)
    except KeyboardInterrupt:
        pass
    finally:
        writer.close()


def _tail_file(
    db: DbLocation,
    f: ql.Filters,
    emit: Callable[[Sequence[ql.Row]], bool],
    deadline: float | None,
) -> None:
    storage = open_db(db)
    try:
        cursor = storage.tail(f)
        try:
            # On stderr, so scripts (and tests) know from when on readings count as new.
            click.echo(f"tail: following {db.path}", err=True)
            while True:
                if emit(cursor.poll()):
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    return
                time.sleep(TAIL_POLL_S)
        finally:
            cursor.close()
    finally:
        storage.close()


def _tail_remote(
    remote: Remote,
    f: ql.Filters,
    emit: Callable[[Sequence[ql.Row]], bool],
    deadline: float | None,
) -> None:
    rows = remote.stream(filter_params(f), deadline)
    try:
        for row in rows:
            if emit([row]):
                return
    finally:
        rows.close()  # closes the HTTP connection now, not when the generator is collected


@click.command()
@click.option(
    "--device", "devices", multiple=True, metavar="GLOB", help="Device name glob. Repeatable."
)
@range_options
@click.option(
    "--code",
    "codes",
    multiple=True,
    metavar="CODE",
    help="Reject code, e.g. out_of_range. Repeatable.",
)
@click.option("--pending", is_flag=True, help="Only rejects not replayed yet.")
@click.option("--limit", type=int, metavar="N", help="At most N rows.")
@click.option("--order", default="asc", show_default=True, metavar="asc|desc", help="Time order.")
@click.option(
    "--replay",
    is_flag=True,
    help="Re-validate pending rejects and move the ones that now pass into the "
    "readings, exactly once (writes to --db).",
)
@click.option(
    "--kinds",
    "kinds_file",
    metavar="PATH",
    type=click.Path(dir_okay=False),
    help="User-defined kinds file to validate against when replaying.",
)
@format_option()
@source_options
def rejected(
    devices: tuple[str, ...],
    since: str | None,
    until: str | None,
    codes: tuple[str, ...],
    pending: bool,
    limit: int | None,
    order: str,
    replay: bool,
    kinds_file: str | None,
    fmt: str | None,
    db: str | None,
    config_file: str | None,
    url: str | None,
    token: str | None,
) -> None:
    """Browse the dead-letter table of rejected readings, or replay it with --replay."""
    r = time_range(since, until)
    ordr = ql.parse_order(order)
    if limit is not None:
        ql.parse_limit(limit)
    out = sys.stdout
    if replay:
        if url is not None:
            raise ConfigError("--replay: writes to the database file; use --db, not --url")
        loc = database(db, config_file, writes=True)
        open_db(loc).close()
        from collector.ingest.prepare import Ingest
        from schemas.kinds import KindFileError, load_kinds_file

        try:
            extra = load_kinds_file(kinds_file) if kinds_file else ()
        except KindFileError as exc:
            raise ConfigError(f"--kinds: {exc}") from None
        storage = open_db(loc, writes=True)
        try:
            result = storage.replay_rejected(
                Ingest.from_kinds(extra), devices=devices, now_ns=time.time_ns()
            )
        finally:
            storage.close()
        click.echo(
            f"replayed {result.replayed} of {result.checked} pending rejects; "
            f"{result.still_rejected} still rejected"
        )
        return
    fmt = out_format(fmt, out)
    if url is not None:
        p = (
            [("device", d) for d in devices]
            + range_params(r.since, r.until)
            + [("code", c) for c in codes]
        )
        p += [("order", ordr)] + ([("pending", "true")] if pending else [])
        rows = Remote(url, token).rows("rejected", "rejected", p, limit)
        formats.write_rows(rows, ql.REJECTED_COLUMNS, fmt, out)
        return
    storage = open_db(database(db, config_file))
    try:
        formats.write_rows(
            ql.list_rejected(
                storage,
                RejectedFilter(
                    devices=tuple(devices),
                    since_ns=r.since,
                    until_ns=r.until,
                    codes=tuple(codes),
                    pending_only=pending,
                    order=ordr,
                    limit=limit,
                ),
            ),
            ql.REJECTED_COLUMNS,
            fmt,
            out,
        )
    finally:
        storage.close()


@click.command()
@filter_options
@range_options
@click.option(
    "--every", metavar="DURATION", help="Export aggregates in buckets this wide (needs --agg)."
)
@click.option("--agg", metavar="FUNC", help=f"Aggregate per bucket: {', '.join(ql.AGGS)}.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    metavar="FILE",
    help="Write to FILE instead of standard output.",
)
@format_option(("csv", "jsonl"), default="jsonl")
@source_options
def export(
    devices: tuple[str, ...],
    sensors: tuple[str, ...],
    kinds: tuple[str, ...],
    tags: tuple[str, ...],
    fields: tuple[str, ...],
    since: str | None,
    until: str | None,
    every: str | None,
    agg: str | None,
    output: str | None,
    fmt: str,
    db: str | None,
    config_file: str | None,
    url: str | None,
    token: str | None,
) -> None:
    """Stream a filtered range as CSV or JSON Lines (constant memory for any size)."""
    f = filters(devices, sensors, kinds, tags, fields)
    r = time_range(since, until)
    if (every is None) != (agg is None):
        raise ConfigError("--every: and --agg go together" if every else "--agg: needs --every")
    every_ns = None if every is None else ql.parse_duration(every, option="--every")
    aggf = None if agg is None else ql.parse_agg(agg)
    out: TextIO = sys.stdout if output is None else open(output, "w", encoding="utf-8", newline="")
    try:
        columns = ql.AGGREGATE_COLUMNS if aggf else ql.READING_COLUMNS
        if url is not None:
            remote = Remote(url, token)
            params = filter_params(f) + range_params(r.since, r.until)
            if every_ns is not None and aggf is not None:
                params += [("every", f"{every_ns}ns"), ("agg", aggf)]
                rows = remote.rows("aggregate", "aggregates", params, None)
            else:
                rows = remote.rows("readings", "readings", params, None)
            formats.write_rows(rows, columns, fmt, out)
            return
        storage = open_db(database(db, config_file))
        try:
            series_l = ql.resolve_series(storage, f)
            if every_ns is not None and aggf is not None:
                it = ql.aggregates(storage, series_l, r.since, r.until, every_ns, aggf)
            else:
                it = ql.readings(storage, series_l, r.since, r.until)
            formats.write_rows(it, columns, fmt, out)
        finally:
            storage.close()
    finally:
        if output is not None:
            out.close()
        else:
            out.flush()
