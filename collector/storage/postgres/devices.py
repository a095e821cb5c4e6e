"""The device registry and stream sessions in PostgreSQL.

The same rules as the SQLite registry, and its pure helpers (collector.storage.sqlite.devices:
random tokens, stored as SHA-256 hex digests, compared with `hmac.compare_digest`; an unknown
device costs the same comparison as a known one). Every function takes a connection in
autocommit mode and runs its own short transaction where it writes; none touches readings.
"""

from __future__ import annotations

import hmac
from typing import Final

import psycopg

from collector.storage.interface import DEVICE_NAME_RE, AuthResult, Device, DeviceError, check_name
from collector.storage.postgres.schema import DEVICES, STREAMS, Conn
from collector.storage.sqlite.devices import hash_token, new_token

# What an unknown name is compared against, so it costs what a known one does.
_DUMMY_HASH: Final = hash_token("no such device")
_COLUMNS: Final = "id, name, created_ns, revoked_ns, last_seq, last_seen_ns, spool_dropped"


def _device(r: tuple[object, ...]) -> Device:
    return Device(*r)  # type: ignore[arg-type]  # column order matches _COLUMNS


def get_device(conn: Conn, name: str) -> Device | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM {DEVICES} WHERE name = %s", (name,)).fetchone()
    return None if row is None else _device(row)


def list_devices(conn: Conn) -> list[Device]:
    # COLLATE "C": by code point, as SQLite orders text, whatever the database's locale.
    rows = conn.execute(f'SELECT {_COLUMNS} FROM {DEVICES} ORDER BY name COLLATE "C"')
    return [_device(r) for r in rows]


def add_device(
    conn: Conn, name: str, now_ns: int, *, token: str | None = None
) -> tuple[Device, str]:
    """Register a device; returns it and its token. Raises DeviceError for a bad or
    duplicate name."""
    check_name(name)
    token = token if token is not None else new_token()
    try:
        with conn.transaction():
            row = conn.execute(
                f"INSERT INTO {DEVICES} (name, token_hash, created_ns) VALUES (%s, %s, %s) "
                f"RETURNING {_COLUMNS}",
                (name, hash_token(token), now_ns),
            ).fetchone()
    except psycopg.errors.UniqueViolation:
        raise DeviceError(f"device {name!r} already exists") from None
    assert row is not None
    return _device(row), token


def revoke_device(conn: Conn, name: str, now_ns: int) -> Device:
    """Revoke a device (idempotent). Raises DeviceError for an unknown name."""
    with conn.transaction():
        row = conn.execute(
            f"UPDATE {DEVICES} SET revoked_ns = coalesce(revoked_ns, %s) WHERE name = %s "
            f"RETURNING {_COLUMNS}",
            (now_ns, name),
        ).fetchone()
    if row is None:
        raise DeviceError(f"no device named {name!r}")
    return _device(row)


def authenticate(
    conn: Conn, name: str, token: str, now_ns: int, *, allow_unknown: bool = False
) -> AuthResult:
    """Check a HELLO's name and token (collector.storage.sqlite.devices.authenticate's rules)."""
    row = None
    if DEVICE_NAME_RE.match(name):
        row = conn.execute(
            f"SELECT {_COLUMNS}, token_hash FROM {DEVICES} WHERE name = %s", (name,)
        ).fetchone()
    stored = _DUMMY_HASH if row is None else str(row[-1])
    ok = hmac.compare_digest(hash_token(token), stored)
    if row is None:
        if allow_unknown and DEVICE_NAME_RE.match(name) and token:
            try:
                new, _ = add_device(conn, name, now_ns, token=token)
            except DeviceError:
                return AuthResult(None, "device registration raced; retry")
            return AuthResult(new, registered=True)
        return AuthResult(None, "unknown device or wrong token")
    if not ok:
        return AuthResult(None, "unknown device or wrong token")
    device = _device(row[:-1])
    if device.revoked_ns is not None:
        return AuthResult(None, "device revoked")
    return AuthResult(device)


def open_session(
    conn: Conn, device_id: int, stream: str, now_ns: int, *, spool_dropped: int = 0
) -> tuple[int, int]:
    """Start a session of (device, stream): returns its committed last seq and the new epoch.

    The upsert takes the stream's row lock, so it waits for a store transaction holding it
    (collector.storage.postgres.ingest) and every later one sees the new epoch.
    """
    with conn.transaction():
        if spool_dropped:
            conn.execute(
                f"UPDATE {DEVICES} SET spool_dropped = spool_dropped + %s WHERE id = %s",
                (spool_dropped, device_id),
            )
        row = conn.execute(
            f"INSERT INTO {STREAMS} (device_id, stream, last_seq, epoch, created_ns, "
            "last_seen_ns) VALUES (%s, %s, 0, 1, %s, %s) ON CONFLICT (device_id, stream) "
            f"DO UPDATE SET epoch = {STREAMS}.epoch + 1, last_seen_ns = excluded.last_seen_ns "
            "RETURNING last_seq, epoch",
            (device_id, stream, now_ns, now_ns),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def device_named_by_token(conn: Conn, token: str) -> str | None:
    """The name of the device whose token hash is `token`'s (revoked ones included)."""
    row = conn.execute(
        f"SELECT name FROM {DEVICES} WHERE token_hash = %s ORDER BY id LIMIT 1",
        (hash_token(token),),
    ).fetchone()
    return None if row is None else str(row[0])


def forward_key(conn: Conn, name: str) -> tuple[Device, str] | None:
    """The device called `name` and its stored token hash (the forward input's key)."""
    if not DEVICE_NAME_RE.match(name):
        return None
    row = conn.execute(f"SELECT token_hash FROM {DEVICES} WHERE name = %s", (name,)).fetchone()
    device = get_device(conn, name)
    if row is None or device is None:
        return None
    return device, str(row[0])
