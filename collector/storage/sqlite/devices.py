"""The device registry: names, hashed tokens, revocation, and HELLO authentication.

Tokens are random (`secrets`), shown once when a device is added, and stored only as their
SHA-256 hex digest; a HELLO's token is hashed and compared with `hmac.compare_digest`, and
an unknown device costs the same comparison as a known one, so timing tells nothing.

Every function takes an open `sqlite3.Connection` and does its own small transaction where
it writes; this module opens no connections and never touches readings. The daemon calls
`authenticate` from the writer thread; the `telemetry devices` commands call the rest.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from typing import Final

from collector.storage.interface import DEVICE_NAME_RE as DEVICE_NAME_RE
from collector.storage.interface import AuthResult as AuthResult
from collector.storage.interface import Device as Device
from collector.storage.interface import DeviceError as DeviceError
from collector.storage.interface import check_name as check_name
from collector.storage.sqlite.store import DEVICES, STREAMS

# 32 random bytes: far beyond guessing, and short enough to paste into a config file.
TOKEN_BYTES: Final = 32
_DUMMY_HASH: Final = hashlib.sha256(b"no such device").hexdigest()


def new_token() -> str:
    """A fresh random token (URL-safe text)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The stored form of a token: SHA-256 hex digest of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


_COLUMNS: Final = "id, name, created_ns, revoked_ns, last_seq, last_seen_ns, spool_dropped"


def _row(r: tuple[object, ...]) -> Device:
    return Device(*r)  # type: ignore[arg-type]  # column order matches _COLUMNS


def get_device(conn: sqlite3.Connection, name: str) -> Device | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM {DEVICES} WHERE name = ?", (name,)).fetchone()
    return None if row is None else _row(row)


def name_by_token(conn: sqlite3.Connection, token: str) -> str | None:
    """The name of the device whose stored hash is the token's (None: no such device)."""
    row = conn.execute(
        f"SELECT name FROM {DEVICES} WHERE token_hash = ?", (hash_token(token),)
    ).fetchone()
    return None if row is None else str(row[0])


def forward_key(conn: sqlite3.Connection, name: str) -> tuple[Device, str] | None:
    """The device called `name` and its stored token hash (None: unknown or invalid name)."""
    device = get_device(conn, name) if DEVICE_NAME_RE.match(name) else None
    if device is None:
        return None
    row = conn.execute(f"SELECT token_hash FROM {DEVICES} WHERE id = ?", (device.id,)).fetchone()
    return device, str(row[0])


def list_devices(conn: sqlite3.Connection) -> list[Device]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM {DEVICES} ORDER BY name").fetchall()
    return [_row(r) for r in rows]


def add_device(
    conn: sqlite3.Connection, name: str, now_ns: int, *, token: str | None = None
) -> tuple[Device, str]:
    """Register a device; returns it and its token (the only time the token is known).

    Raises DeviceError for a bad or duplicate name.
    """
    check_name(name)
    token = token if token is not None else new_token()
    try:
        with _txn(conn):
            conn.execute(
                f"INSERT INTO {DEVICES} (name, token_hash, created_ns) VALUES (?, ?, ?)",
                (name, hash_token(token), now_ns),
            )
    except sqlite3.IntegrityError:
        raise DeviceError(f"device {name!r} already exists") from None
    device = get_device(conn, name)
    assert device is not None
    return device, token


def revoke_device(conn: sqlite3.Connection, name: str, now_ns: int) -> Device:
    """Revoke a device's token (its stored readings stay). Raises DeviceError if unknown."""
    with _txn(conn):
        cur = conn.execute(
            f"UPDATE {DEVICES} SET revoked_ns = coalesce(revoked_ns, ?) WHERE name = ?",
            (now_ns, name),
        )
    if cur.rowcount != 1:
        raise DeviceError(f"no device named {name!r}")
    device = get_device(conn, name)
    assert device is not None
    return device


def authenticate(
    conn: sqlite3.Connection,
    name: str,
    token: str,
    now_ns: int,
    *,
    allow_unknown: bool = False,
) -> AuthResult:
    """Check a HELLO's device name and token against the registry.

    With `allow_unknown`, a device name never seen before is registered on the spot with the
    token it presented (demo mode). A revoked device is always refused.
    """
    device = get_device(conn, name) if DEVICE_NAME_RE.match(name) else None
    if device is None:
        stored = _DUMMY_HASH
    else:
        row = conn.execute(
            f"SELECT token_hash FROM {DEVICES} WHERE id = ?", (device.id,)
        ).fetchone()
        stored = str(row[0])
    ok = hmac.compare_digest(hash_token(token), stored)
    if device is None:
        if allow_unknown and DEVICE_NAME_RE.match(name) and token:
            try:
                new, _ = add_device(conn, name, now_ns, token=token)
            except DeviceError:
                return AuthResult(None, "device registration raced; retry")
            return AuthResult(new, registered=True)
        return AuthResult(None, "unknown device or wrong token")
    if not ok:
        return AuthResult(None, "unknown device or wrong token")
    if device.revoked_ns is not None:
        return AuthResult(None, "device revoked")
    return AuthResult(device)


def open_session(
    conn: sqlite3.Connection, device_id: int, stream: str, now_ns: int
) -> tuple[int, int]:
    """Start a session of (device, stream): returns its committed last seq and the new epoch.

    Raising the stream's epoch fences every older session of it, in this process or any
    other sharing the file: collector.storage.sqlite.batchstore stores a batch only while the epoch
    it was sent under is still the stream's (protocol v1.1). Commits (one statement).
    """
    row = conn.execute(
        f"INSERT INTO {STREAMS} (device_id, stream, last_seq, epoch, created_ns, last_seen_ns) "
        "VALUES (?1, ?2, 0, 1, ?3, ?3) ON CONFLICT (device_id, stream) DO UPDATE SET "
        "epoch = epoch + 1, last_seen_ns = ?3 RETURNING last_seq, epoch",
        (device_id, stream, now_ns),
    ).fetchall()[0]  # fetchall: the statement must finish for its implicit COMMIT
    return int(row[0]), int(row[1])


def streams(conn: sqlite3.Connection, device_id: int) -> list[tuple[str, int, int | None]]:
    """(stream, last_seq, last_seen_ns) of a device's streams, the default stream first."""
    rows = conn.execute(
        f"SELECT stream, last_seq, last_seen_ns FROM {STREAMS} WHERE device_id = ? ORDER BY stream",
        (device_id,),
    ).fetchall()
    return [(str(r[0]), int(r[1]), r[2]) for r in rows]


class _txn:
    """BEGIN IMMEDIATE ... COMMIT on an autocommit connection; ROLLBACK on error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
