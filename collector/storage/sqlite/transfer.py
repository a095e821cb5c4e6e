"""Copying devices and dead letters in and out of one SQLite file (`telemetry migrate`).

`SQLiteStorage.export_devices` / `import_device` / `export_dead_letters` /
`import_dead_letters` call these with a connection of the right kind; readings travel
through the ordinary read and store paths instead. The token stays a hash throughout: the
file never held the token itself.

No threads, no event loop; the caller holds the write connection for the imports.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

from collector.storage.interface import (
    DeadLetterRecord,
    Device,
    DeviceError,
    DeviceRecord,
    check_name,
)
from collector.storage.rows import dead_letter_record, device_records, import_sql
from collector.storage.sqlite import devices, store
from collector.storage.sqlite.dialect import DIALECT

# The import statements, written alike for both backends (collector.storage.rows).
_SQL = import_sql(DIALECT)


def export_devices(conn: sqlite3.Connection) -> list[DeviceRecord]:
    """Every device with its token hash and streams, by name."""
    return device_records(
        conn.execute(
            f"SELECT id, name, token_hash, created_ns, revoked_ns, spool_dropped, last_seq "
            f"FROM {store.DEVICES} ORDER BY name"
        ).fetchall(),
        conn.execute(
            f"SELECT device_id, stream, last_seq FROM {store.STREAMS} ORDER BY device_id, stream"
        ),
    )


def import_device(conn: sqlite3.Connection, record: DeviceRecord) -> Device:
    """See `Storage.import_device`. Commits."""
    check_name(record.name)
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(_SQL.device, (record.name,)).fetchone()
        if row is None:
            dev_id = conn.execute(
                _SQL.insert_device,
                (
                    record.name,
                    record.token_hash,
                    record.created_ns,
                    record.revoked_ns,
                    record.spool_dropped,
                ),
            ).fetchall()[0][0]
        elif row[1] != record.token_hash:
            raise DeviceError(
                f"device {record.name!r} exists here with another token; revoke or rename it"
            )
        else:
            dev_id = row[0]
            if record.revoked_ns is not None:
                conn.execute(_SQL.revoke_device, (record.revoked_ns, dev_id))
        for stream, last_seq in record.streams:
            conn.execute(_SQL.merge_stream, (dev_id, stream, last_seq, record.created_ns))
            if stream == "":
                conn.execute(_SQL.raise_device_seq, (last_seq, dev_id))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    device = devices.get_device(conn, record.name)
    assert device is not None
    return device


def export_dead_letters(conn: sqlite3.Connection) -> Iterator[DeadLetterRecord]:
    """Every dead letter by (receive time, id), streamed."""
    yield from map(dead_letter_record, conn.execute(_SQL.export_dead_letters))


def import_dead_letters(conn: sqlite3.Connection, records: Sequence[DeadLetterRecord]) -> int:
    """See `Storage.import_dead_letters`. Commits."""
    ids: dict[str, int] = {}
    added = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for r in records:
            dev_id = ids.get(r.device)
            if dev_id is None:
                row = conn.execute(_SQL.device_id, (r.device,)).fetchone()
                if row is None:
                    raise DeviceError(f"no device named {r.device!r}: import devices first")
                dev_id = ids[r.device] = int(row[0])
            d = r.letter
            seen = conn.execute(
                _SQL.dead_letter_seen, (dev_id, r.seq, d.index, d.raw, r.received_ns)
            ).fetchone()
            if seen:
                continue
            conn.execute(
                _SQL.insert_dead_letter,
                (dev_id, r.received_ns, r.seq, d.index, d.raw, d.reading, d.code, d.path,
                 d.message, r.replayed_ns),
            )  # fmt: skip
            added += 1
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return added
