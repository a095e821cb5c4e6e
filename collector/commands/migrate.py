"""`telemetry migrate`: copy everything one database holds into another, through the storage
interface (collector/storage/interface.py), e.g. an SQLite file into PostgreSQL.

Devices keep their token hashes (agents' tokens keep working) and their streams' last seq
(agents resume where they were); readings travel series by series in batches through the
ordinary store path, so the target deduplicates them on (series, timestamp): a second run,
or a run after an interrupted one, copies only what is missing. Dead letters follow, each
kept once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import click

from collector.ingest.prepare import canonical_tags
from collector.storage.factory import open_storage
from collector.storage.interface import (
    DeadLetterRecord,
    DeviceError,
    Filters,
    PreparedBatch,
    Session,
    Storage,
)

# Readings per stored batch: one transaction each on the target.
BATCH_READINGS: Final = 5_000
# Series read per range scan of the source.
SERIES_PER_SCAN: Final = 500
DEAD_LETTERS_PER_TXN: Final = 1_000


@click.command("migrate")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="PATH|URL",
    help="Database to copy from (left unchanged).",
)
@click.option(
    "--to",
    "target",
    required=True,
    metavar="PATH|URL",
    help="Database to copy into: an SQLite file (created) or a postgresql:// URL.",
)
@click.option(
    "--batch",
    "batch_readings",
    type=click.IntRange(1, 100_000),
    default=BATCH_READINGS,
    show_default=True,
    help="Readings per transaction on the target.",
)
@click.option("--quiet", is_flag=True, help="Print only the summary line.")
def migrate(source: str, target: str, batch_readings: int, quiet: bool) -> None:  # fmt: skip
    """Copy devices, readings and dead letters from one database into another.

    \b
    Typical use, moving a collector from its SQLite file to PostgreSQL:
      systemctl stop telemetry-collector
      telemetry migrate --from /var/lib/telemetry/telemetry.db \\
                        --to postgresql://telemetry@db.example/telemetry
      (set db = "postgresql://..." in collector.toml) && systemctl start telemetry-collector

    Devices keep their tokens and their agents' resume points. Readings already in the
    target are skipped, so running it again (after an interruption, or to pick up what a
    running collector stored meanwhile) copies only what is missing.
    """
    if source == target:
        raise click.UsageError("--from and --to name the same database")
    try:
        src = open_storage(source, readonly=True)
    except (FileNotFoundError, OSError) as exc:
        raise click.UsageError(f"cannot open --from {source}: {exc}") from None
    try:
        dst = open_storage(target)
    except Exception as exc:
        src.close()
        raise click.UsageError(f"cannot open --to {target}: {exc}") from None
    t0 = time.monotonic()
    try:
        counts = _copy(src, dst, batch_readings, None if quiet else click.echo)
    except DeviceError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        src.close()
        dst.close()
    click.echo(
        f"migrated {counts['devices']} devices, {counts['series']} series, "
        f"{counts['accepted']} readings ({counts['duplicate']} already there), "
        f"{counts['dead']} dead letters in {time.monotonic() - t0:.1f} s"
    )


def _copy(
    src: Storage, dst: Storage, batch_readings: int, say: Callable[[str], None] | None
) -> dict[str, int]:
    counts = dict.fromkeys(("devices", "series", "accepted", "duplicate", "dead"), 0)
    for record in src.export_devices():
        device = dst.import_device(record)
        counts["devices"] += 1
        series = src.resolve_series(Filters(devices=(record.name,)))
        counts["series"] += len(series)
        keys = {s.id: (s.sensor, s.field, s.kind, s.unit, canonical_tags(s.tags)) for s in series}
        before = counts["accepted"]
        for i in range(0, len(series), SERIES_PER_SCAN):
            ids = [s.id for s in series[i : i + SERIES_PER_SCAN]]
            batch = _batch()
            for sid, ts, value in src.read_range(ids, None, None):
                if value is None:
                    continue  # nothing to copy (a series row without a value)
                batch.keys.append(keys[sid])
                batch.ts.append(ts)
                batch.values.append(value)
                if len(batch.ts) >= batch_readings:
                    _store(dst, device.id, batch, counts)
                    batch = _batch()
            if batch.ts:
                _store(dst, device.id, batch, counts)
        if say is not None:
            say(
                f"{record.name}: {len(series)} series, "
                f"{counts['accepted'] - before} readings copied"
            )
    chunk: list[DeadLetterRecord] = []
    for letter in src.export_dead_letters():
        chunk.append(letter)
        if len(chunk) >= DEAD_LETTERS_PER_TXN:
            counts["dead"] += dst.import_dead_letters(chunk)
            chunk = []
    if chunk:
        counts["dead"] += dst.import_dead_letters(chunk)
    return counts


def _batch() -> PreparedBatch:
    return PreparedBatch(seq=0, received_ns=time.time_ns())


def _store(dst: Storage, device_id: int, batch: PreparedBatch, counts: dict[str, int]) -> None:
    # Every row as one scalar reading: composite values are stored one row per field.
    batch.scalar_rows = batch.valid_count = len(batch.ts)
    (outcome,) = dst.store([(Session(device_id), batch)]).outcomes
    counts["accepted"] += outcome.accepted
    counts["duplicate"] += outcome.duplicate
