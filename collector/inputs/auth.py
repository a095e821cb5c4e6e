"""Device authentication for the foreign inputs (InfluxDB HTTP writes, Fluent forward).

The same registry and the same check as a TCP HELLO (`Storage.authenticate`: the token's
hash compared in constant time, revoked devices refused). The difference is how the device
is named: an InfluxDB client presents only a token, so the device is the one whose stored
hash matches it (`Storage.device_named_by_token`); a v1 client may name it (`u=`). The Fluent
forward handshake proves a shared secret with salted SHA-512 digests instead of sending it,
so it needs the secret itself on this side: a device's *forward key* is the SHA-256 hex
digest of its token (what the registry stores, `Storage.forward_key`; docs/inputs.md says
how to compute it).

Unknown devices are never registered here, whatever `allow_unknown_devices` says: a token
alone names no device, and a forward digest reveals no token.

Every function takes the storage and only reads (call them off the event loop).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Final

from collector.storage.interface import AuthResult, Device, Storage

REFUSED: Final = "unknown device or wrong token"
_DUMMY_KEY: Final = hashlib.sha256(b"no such device").hexdigest()


def by_token(storage: Storage, token: str, name: str | None = None) -> AuthResult:
    """The device a token belongs to (or the named one, when `name` is given), checked."""
    if not token:
        return AuthResult(None, "no token given")
    if not name:
        name = storage.device_named_by_token(token)
        if name is None:
            return AuthResult(None, REFUSED)
    return storage.authenticate(name, token, time.time_ns(), allow_unknown=False)


@dataclass(frozen=True, slots=True)
class ForwardIdentity:
    """A device as the forward handshake sees it: None when unknown or revoked, and the
    key to check digests with (a dummy one then, so the digest work is the same)."""

    device: Device | None
    key: str
    reason: str = ""


def forward_key(storage: Storage, name: str) -> ForwardIdentity:
    """The forward key of the device called `name`."""
    found = storage.forward_key(name)
    if found is None:
        return ForwardIdentity(None, _DUMMY_KEY, REFUSED)
    device, key = found
    if device.revoked_ns is not None:
        return ForwardIdentity(None, key, "device revoked")
    return ForwardIdentity(device, key)


def forward_key_of_token(token: str) -> str:
    """What a sender configures as the forward key (shared key / password) of a device."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def digests_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))
