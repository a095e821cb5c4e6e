"""Device authentication for the foreign inputs (InfluxDB HTTP writes, Fluent forward).

The same registry and the same check as a TCP HELLO
(`collector.storage.sqlite.devices.authenticate`: SHA-256 of the token compared in constant time,
revoked devices refused). The difference is how the device is named: an InfluxDB client presents
only a token, so the device is the one whose stored hash matches it; a v1 client may name it (`u=`).
The Fluent forward handshake proves a shared secret with salted SHA-512 digests instead of sending
it, so it needs the secret itself on this side: a device's *forward key* is the SHA-256 hex digest
of its token (what the registry stores; docs/inputs.md says how to compute it).

Unknown devices are never registered here, whatever `allow_unknown_devices` says: a token
alone names no device, and a forward digest reveals no token.

Every function takes an open (read-only is enough) connection and only reads.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import time
from dataclasses import dataclass
from typing import Final

from collector.storage.sqlite import devices
from collector.storage.sqlite.store import DEVICES

REFUSED: Final = "unknown device or wrong token"
_DUMMY_KEY: Final = hashlib.sha256(b"no such device").hexdigest()


def by_token(conn: sqlite3.Connection, token: str, name: str | None = None) -> devices.AuthResult:
    """The device a token belongs to (or the named one, when `name` is given), checked."""
    if not token:
        return devices.AuthResult(None, "no token given")
    if not name:
        row = conn.execute(
            f"SELECT name FROM {DEVICES} WHERE token_hash = ?", (devices.hash_token(token),)
        ).fetchone()
        if row is None:
            return devices.AuthResult(None, REFUSED)
        name = str(row[0])
    return devices.authenticate(conn, name, token, time.time_ns(), allow_unknown=False)


@dataclass(frozen=True, slots=True)
class ForwardIdentity:
    """A device as the forward handshake sees it: None when unknown or revoked, and the
    key to check digests with (a dummy one then, so the digest work is the same)."""

    device: devices.Device | None
    key: str
    reason: str = ""


def forward_key(conn: sqlite3.Connection, name: str) -> ForwardIdentity:
    """The forward key of the device called `name`."""
    device = devices.get_device(conn, name) if devices.DEVICE_NAME_RE.match(name) else None
    if device is None:
        return ForwardIdentity(None, _DUMMY_KEY, REFUSED)
    row = conn.execute(f"SELECT token_hash FROM {DEVICES} WHERE id = ?", (device.id,)).fetchone()
    if device.revoked_ns is not None:
        return ForwardIdentity(None, str(row[0]), "device revoked")
    return ForwardIdentity(device, str(row[0]))


def forward_key_of_token(token: str) -> str:
    """What a sender configures as the forward key (shared key / password) of a device."""
    return devices.hash_token(token)


def digests_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))
