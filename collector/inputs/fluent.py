"""Fluent forward protocol v1, the collector's side (sans-IO: no sockets, no clock, no logging).

Spec: https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1 (as
Fluentd's in_forward implements it). The stream is a sequence of msgpack values with no
length prefix; each value is one message:

    Message                  [tag, time, record, option?]
    Forward                  [tag, [entry, ...], option?]
    PackedForward            [tag, bin|str (concatenated msgpack entries), option?]
    CompressedPackedForward  PackedForward with option {"compressed": "gzip"}; the bytes are
                             one or more concatenated gzip members

An entry is [time, record] or, as Fluent Bit >= 2.1 sends, [[time, metadata], record].
time is an EventTime (msgpack ext type 0: uint32 seconds, uint32 nanoseconds, big-endian),
an integer or float of seconds, or 0 meaning "now". option may carry `size` (events),
`chunk` (answer {"ack": chunk} once the events are stored) and `compressed`.

Handshake (when the server demands it): the server sends
["HELO", {"nonce": bytes, "auth": salt, "keepalive": true}], the client answers
["PING", self_hostname, shared_key_salt, sha512_hex(shared_key_salt + self_hostname +
nonce + shared_key), username, sha512_hex(auth_salt + username + password)], the server
replies ["PONG", ok, reason, server_hostname, sha512_hex(shared_key_salt +
server_hostname + nonce + shared_key)] and closes on failure.

Limits (each one bounds what a single peer can make the collector hold):
`MAX_MESSAGE_BYTES` per msgpack value (Unpacker buffer), `MAX_DECOMPRESSED_BYTES` per
CompressedPackedForward (gzip bombs stop there), `MAX_EVENTS_PER_MESSAGE`.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import msgpack

# Fluent Bit flushes chunks of ~2 MB by default and Fluentd's chunk_limit_size is 8 MB:
# 16 MiB takes either with room, and is what one connection may buffer at most.
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
# A compressed chunk expands to at most this; more is refused (gzip bomb).
MAX_DECOMPRESSED_BYTES: Final = 64 * 1024 * 1024
# Events in one message: 16 MiB of the smallest entries (~10 bytes) would be ~1.6M events.
MAX_EVENTS_PER_MESSAGE: Final = 200_000
# Strings, maps, arrays inside a message (msgpack unpacker limits).
MAX_STR_BYTES: Final = 1024 * 1024
MAX_MAP_ENTRIES: Final = 4096
EVENT_TIME_EXT: Final = 0
_NS: Final = 1_000_000_000
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS


class ForwardError(Exception):
    """The peer sent something the forward protocol does not allow (message is lost)."""


@dataclass(frozen=True, slots=True)
class EventTime:
    """A decoded EventTime ext value, in nanoseconds since the epoch."""

    ns: int


@dataclass(frozen=True, slots=True)
class Event:
    """One (time, record) of a message; ts_ns is None when the sender wrote time 0."""

    ts_ns: int | None
    record: Mapping[object, object]


@dataclass(frozen=True, slots=True)
class Message:
    tag: str
    events: tuple[Event, ...]
    chunk: str | None
    # Entries that were not (time, record) pairs: (index, entry, reason).
    invalid: tuple[tuple[int, object, str], ...] = ()


def _ext_hook(code: int, data: bytes) -> object:
    if code == EVENT_TIME_EXT and len(data) == 8:
        return EventTime(int.from_bytes(data[:4], "big") * _NS + int.from_bytes(data[4:], "big"))
    return msgpack.ExtType(code, data)


def unpacker(max_buffer_bytes: int = MAX_MESSAGE_BYTES) -> msgpack.Unpacker:
    """A streaming unpacker for a forward connection, with every size bounded."""
    return msgpack.Unpacker(
        raw=False,
        strict_map_key=False,
        ext_hook=_ext_hook,
        timestamp=0,  # the msgpack Timestamp ext (-1) decodes to msgpack.Timestamp
        max_buffer_size=max_buffer_bytes,
        max_str_len=MAX_STR_BYTES,
        max_bin_len=max_buffer_bytes,
        max_array_len=MAX_EVENTS_PER_MESSAGE,
        max_map_len=MAX_MAP_ENTRIES,
        max_ext_len=16,
    )


def decode_message(obj: object, max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES) -> Message:
    """One forward message. Raises ForwardError when it is not one."""
    if not isinstance(obj, list | tuple) or len(obj) < 2:
        raise ForwardError("not a forward message (an array [tag, ...])")
    tag = obj[0]
    if not isinstance(tag, str):
        raise ForwardError("the tag is not a string")
    second = obj[1]
    if isinstance(second, list | tuple):  # Forward
        option = _option(obj, 2)
        entries: list[object] = list(second)
    elif isinstance(second, bytes | str):  # PackedForward, maybe compressed
        option = _option(obj, 2)
        data = second.encode("utf-8", "surrogateescape") if isinstance(second, str) else second
        compressed = option.get("compressed") if option else None
        if compressed == "gzip":
            data = gunzip(data, max_decompressed_bytes)
        elif compressed not in (None, "text"):
            raise ForwardError(f"unknown compression {compressed!r}")
        entries = _unpack_entries(data)
    else:  # Message
        if len(obj) < 3:
            raise ForwardError("a Message needs [tag, time, record]")
        option = _option(obj, 3)
        entries = [[second, obj[2]]]
    if len(entries) > MAX_EVENTS_PER_MESSAGE:
        raise ForwardError(f"more than {MAX_EVENTS_PER_MESSAGE} events in one message")
    events: list[Event] = []
    invalid: list[tuple[int, object, str]] = []
    for i, e in enumerate(entries):
        try:
            events.append(_entry(e))
        except ForwardError as exc:
            invalid.append((i, e, str(exc)))
    chunk = option.get("chunk") if option else None
    if chunk is not None and not isinstance(chunk, str):
        raise ForwardError("option 'chunk' is not a string")
    return Message(tag, tuple(events), chunk, tuple(invalid))


def _option(obj: list[object] | tuple[object, ...], i: int) -> Mapping[object, object] | None:
    if len(obj) <= i or obj[i] is None:
        return None
    opt = obj[i]
    if not isinstance(opt, dict):
        raise ForwardError("the option is not a map")
    return opt


def _entry(e: object) -> Event:
    if not isinstance(e, list | tuple) or len(e) != 2:
        raise ForwardError("an entry is not [time, record]")
    t, record = e
    if isinstance(t, list | tuple):  # [[time, metadata], record]
        if len(t) != 2 or not (t[1] is None or isinstance(t[1], dict)):
            raise ForwardError("an entry's [time, metadata] is malformed")
        t = t[0]
    if not isinstance(record, dict):
        raise ForwardError("a record is not a map")
    return Event(event_time_ns(t), record)


def event_time_ns(t: object) -> int | None:
    """An entry's time in ns; None for 0 ("now"). Raises ForwardError."""
    if isinstance(t, EventTime):
        return t.ns or None
    if isinstance(t, bool):
        raise ForwardError("an entry's time is a boolean")
    if isinstance(t, int):
        if t < 0:
            raise ForwardError("an entry's time is negative")
        return t * _NS or None
    if isinstance(t, float):
        if not 0 <= t < 2**63 / _NS:  # also refuses NaN
            raise ForwardError("an entry's time is out of range")
        sec = math.floor(t)  # whole seconds exactly, the fraction rounded to ns
        return sec * _NS + round((t - sec) * _NS) or None
    if isinstance(t, msgpack.Timestamp):
        return t.to_unix_nano() or None
    raise ForwardError("an entry's time is not an EventTime or a number")


def _unpack_entries(data: bytes) -> list[object]:
    u = unpacker(max(len(data), 1))
    try:
        u.feed(data)
        entries: list[object] = []
        end = 0  # after the last complete entry (tell() also counts a partial one)
        for e in u:
            entries.append(e)
            end = u.tell()
            if len(entries) > MAX_EVENTS_PER_MESSAGE:
                raise ForwardError(f"more than {MAX_EVENTS_PER_MESSAGE} events in one message")
    except (ValueError, msgpack.UnpackException) as exc:
        raise ForwardError(f"packed entries do not decode: {exc}") from None
    if end != len(data):
        raise ForwardError("packed entries end inside an entry")
    return entries


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress one or more concatenated gzip members, at most `limit` bytes out.

    Raises ForwardError for bad data or output over `limit`."""
    out: list[bytes] = []
    size = 0
    rest = data
    while rest:
        d = zlib.decompressobj(_GZIP_WBITS)
        try:
            chunk = d.decompress(rest, limit - size + 1)
        except zlib.error as exc:
            raise ForwardError(f"gzip data does not decompress: {exc}") from None
        size += len(chunk)
        if size > limit:
            raise ForwardError(f"gzip data expands past {limit} bytes")
        out.append(chunk)
        if not d.eof:
            if d.unconsumed_tail:  # stopped by the limit with input left: over it
                raise ForwardError(f"gzip data expands past {limit} bytes")
            raise ForwardError("gzip data is truncated")
        rest = d.unused_data
    return b"".join(out)


# ---------------------------------------------------------------- handshake


def _b(v: str | bytes) -> bytes:
    return v.encode("utf-8") if isinstance(v, str) else v


def digest(*parts: str | bytes) -> str:
    """sha512 hex digest of the parts' bytes, concatenated (every digest of the handshake)."""
    h = hashlib.sha512()
    for p in parts:
        h.update(_b(p))
    return h.hexdigest()


def helo(nonce: bytes, auth_salt: bytes) -> list[object]:
    return ["HELO", {"nonce": nonce, "auth": auth_salt, "keepalive": True}]


@dataclass(frozen=True, slots=True)
class Ping:
    hostname: str
    shared_key_salt: bytes
    shared_key_digest: str
    username: str
    password_digest: str


def parse_ping(obj: object) -> Ping:
    """The client's PING. Raises ForwardError when it is not one."""
    if not isinstance(obj, list | tuple) or len(obj) != 6 or obj[0] != "PING":
        raise ForwardError("expected PING")
    _, host, salt, key_digest, user, pw_digest = obj
    # A client without a username may send nil for it (fluent-logger for Node.js does).
    user = "" if user is None else user
    pw_digest = "" if pw_digest is None else pw_digest
    if not isinstance(host, str) or not isinstance(salt, str | bytes):
        raise ForwardError("malformed PING")
    if not all(isinstance(x, str) for x in (key_digest, user, pw_digest)):
        raise ForwardError("malformed PING")
    return Ping(host, _b(salt), str(key_digest), str(user), str(pw_digest))


def pong(ok: bool, reason: str, server_hostname: str, key_digest: str) -> list[object]:
    if not ok:
        return ["PONG", False, reason, "", ""]
    return ["PONG", True, "", server_hostname, key_digest]


def ack(chunk: str) -> dict[str, str]:
    return {"ack": chunk}


def event_time(ns: int) -> msgpack.ExtType:
    """An EventTime ext value (for senders and tests)."""
    return msgpack.ExtType(
        EVENT_TIME_EXT, (ns // _NS).to_bytes(4, "big") + (ns % _NS).to_bytes(4, "big")
    )
