"""Copying devices and dead letters in and out of a PostgreSQL database (`telemetry migrate`).

The PostgreSQL twin of collector.storage.sqlite.transfer: `PostgresStorage.export_devices` /
`import_device` / `export_dead_letters` / `import_dead_letters` call these with a connection
in autocommit mode; each import runs in one transaction of its own. Readings travel through
the ordinary read and store paths. Tokens stay hashes throughout.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from collector.storage.interface import (
    DeadLetterRecord,
    Device,
    DeviceError,
    DeviceRecord,
    check_name,
)
from collector.storage.postgres import devices
from collector.storage.postgres.ingest import clean_text
from collector.storage.postgres.schema import DEVICES, DIALECT, STREAMS, Conn
from collector.storage.rows import dead_letter_record, device_records, import_sql

# The import statements, written alike for both backends (collector.storage.rows).
_SQL = import_sql(DIALECT)


def export_devices(conn: Conn) -> list[DeviceRecord]:
    """Every device with its token hash and streams, by name."""
    return device_records(
        conn.execute(
            f"SELECT id, name, token_hash, created_ns, revoked_ns, spool_dropped, last_seq "
            f'FROM {DEVICES} ORDER BY name COLLATE "C"'
        ).fetchall(),
        conn.execute(
            f"SELECT device_id, stream, last_seq FROM {STREAMS} "
            'ORDER BY device_id, stream COLLATE "C"'
        ).fetchall(),
    )


def import_device(conn: Conn, record: DeviceRecord) -> Device:
    """See `Storage.import_device`."""
    check_name(record.name)
    with conn.transaction():
        row = conn.execute(_SQL.device, (record.name,)).fetchone()
        if row is None:
            inserted = conn.execute(
                _SQL.insert_device,
                (
                    record.name,
                    record.token_hash,
                    record.created_ns,
                    record.revoked_ns,
                    record.spool_dropped,
                ),
            ).fetchone()
            assert inserted is not None
            dev_id = int(inserted[0])
        elif row[1] != record.token_hash:
            raise DeviceError(
                f"device {record.name!r} exists here with another token; revoke or rename it"
            )
        else:
            dev_id = int(row[0])
            if record.revoked_ns is not None:
                conn.execute(_SQL.revoke_device, (record.revoked_ns, dev_id))
        for stream, last_seq in record.streams:
            conn.execute(_SQL.merge_stream, (dev_id, stream, last_seq, record.created_ns))
            if stream == "":
                conn.execute(_SQL.raise_device_seq, (last_seq, dev_id))
    device = devices.get_device(conn, record.name)
    assert device is not None
    return device


def export_dead_letters(conn: Conn) -> Iterator[DeadLetterRecord]:
    """Every dead letter by (receive time, id), streamed through a server-side cursor."""
    with conn.transaction(), conn.cursor(name="export_dead_letters") as cur:
        cur.execute(_SQL.export_dead_letters)
        yield from map(dead_letter_record, cur)


def import_dead_letters(conn: Conn, records: Sequence[DeadLetterRecord]) -> int:
    """See `Storage.import_dead_letters`."""
    ids: dict[str, int] = {}
    added = 0
    with conn.transaction():
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
                (dev_id, r.received_ns, r.seq, d.index, d.raw, clean_text(d.reading),
                 clean_text(d.code), clean_text(d.path), clean_text(d.message), r.replayed_ns),
            )  # fmt: skip
            added += 1
    return added
