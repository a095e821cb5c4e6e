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
    DeadLetter,
    DeadLetterRecord,
    Device,
    DeviceError,
    DeviceRecord,
    check_name,
)
from collector.storage.rows import device_records
from collector.storage.sqlite import devices, store


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
        row = conn.execute(
            f"SELECT id, token_hash FROM {store.DEVICES} WHERE name = ?", (record.name,)
        ).fetchone()
        if row is None:
            dev_id = conn.execute(
                f"INSERT INTO {store.DEVICES} (name, token_hash, created_ns, revoked_ns, "
                "spool_dropped) VALUES (?, ?, ?, ?, ?) RETURNING id",
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
                conn.execute(
                    f"UPDATE {store.DEVICES} SET revoked_ns = coalesce(revoked_ns, ?) WHERE id = ?",
                    (record.revoked_ns, dev_id),
                )
        for stream, last_seq in record.streams:
            conn.execute(
                f"INSERT INTO {store.STREAMS} (device_id, stream, last_seq, epoch, created_ns) "
                "VALUES (?1, ?2, ?3, 0, ?4) ON CONFLICT (device_id, stream) DO UPDATE SET "
                "last_seq = max(last_seq, ?3)",
                (dev_id, stream, last_seq, record.created_ns),
            )
            if stream == "":
                conn.execute(
                    f"UPDATE {store.DEVICES} SET last_seq = max(last_seq, ?) WHERE id = ?",
                    (last_seq, dev_id),
                )
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
    for name, received, seq, idx, raw, reading, code, path, message, replayed in conn.execute(
        f"SELECT d.name, r.received_ns, r.seq, r.idx, r.raw, r.reading, r.code, r.path, "
        f"r.message, r.replayed_ns FROM {store.REJECTED} AS r "
        f"JOIN {store.DEVICES} AS d ON d.id = r.device_id ORDER BY r.received_ns, r.id"
    ):
        letter = DeadLetter(int(idx), bytes(raw), str(reading), str(code), str(path), str(message))
        yield DeadLetterRecord(str(name), int(received), int(seq), letter, replayed)


def import_dead_letters(conn: sqlite3.Connection, records: Sequence[DeadLetterRecord]) -> int:
    """See `Storage.import_dead_letters`. Commits."""
    ids: dict[str, int] = {}
    added = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for r in records:
            dev_id = ids.get(r.device)
            if dev_id is None:
                row = conn.execute(
                    f"SELECT id FROM {store.DEVICES} WHERE name = ?", (r.device,)
                ).fetchone()
                if row is None:
                    raise DeviceError(f"no device named {r.device!r}: import devices first")
                dev_id = ids[r.device] = int(row[0])
            d = r.letter
            seen = conn.execute(
                f"SELECT 1 FROM {store.REJECTED} WHERE device_id = ? AND seq = ? AND idx = ? "
                "AND raw = ? AND received_ns = ?",
                (dev_id, r.seq, d.index, d.raw, r.received_ns),
            ).fetchone()
            if seen:
                continue
            conn.execute(
                f"INSERT INTO {store.REJECTED} (device_id, received_ns, seq, idx, raw, reading, "
                "code, path, message, replayed_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
