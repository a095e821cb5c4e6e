"""PROXY protocol header parser (versions 1 and 2), sans-IO.

A TCP load balancer (HAProxy `send-proxy` / `send-proxy-v2`) opens each connection to the
collector with one header naming the client it relays, before the first byte of the wire
protocol. The reference is HAProxy's `doc/proxy-protocol.txt`:

* v2 (binary): the 12-byte signature `\\r\\n\\r\\n\\x00\\r\\nQUIT\\n`, one byte version (high
  nibble, must be 2) and command (low nibble: 0 LOCAL, 1 PROXY), one byte family (high
  nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) and transport (low nibble: 0 UNSPEC, 1 STREAM,
  2 DGRAM), a 2-byte big-endian length of the rest, then the addresses (12 bytes for INET:
  source, destination, source port, destination port; 36 for INET6; 216 for UNIX) and TLVs,
  which are skipped. LOCAL (the balancer's own health check) carries no client address.
* v1 (text): `PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n` (or TCP6), or `PROXY UNKNOWN
  ...\\r\\n`, at most 107 bytes including the CRLF.

`parse(data)` looks at the bytes received so far and returns NEED_DATA, or the header and
how many bytes it took. Anything that cannot become a valid header raises
`ProxyHeaderError`, and only that (a hypothesis test feeds it random bytes). No I/O and no
logging here; `collector.ingest.server` reads the socket.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX: Final = b"PROXY "
# v1 spec: the longest line ("PROXY UNKNOWN" + two IPv6 addresses + ports) is 107 bytes.
V1_MAX_BYTES: Final = 107
# v2: signature, version/command, family/transport, 2-byte length.
V2_FIXED_BYTES: Final = 16
# Largest v2 header accepted: the addresses plus TLVs HAProxy sends (ALPN, authority, SSL
# fields, unique id) fit in far less; a header this size is a mistake or an attack, and the
# collector must not buffer 64 KiB from a peer that has not identified anything yet.
V2_MAX_BYTES: Final = V2_FIXED_BYTES + 1024

_CMD_LOCAL: Final = 0x0
_CMD_PROXY: Final = 0x1
_FAM_UNSPEC: Final = 0x0
_FAM_INET: Final = 0x1
_FAM_INET6: Final = 0x2
_FAM_UNIX: Final = 0x3
_TRANSPORT_STREAM: Final = 0x1
_INET_BYTES: Final = 12
_INET6_BYTES: Final = 36
_UNIX_BYTES: Final = 216


class ProxyHeaderError(Exception):
    """The bytes are not a valid PROXY protocol header (the connection must be closed)."""


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What the balancer said about the connection.

    `source` is the client's (host, port), None for LOCAL (v2) or UNKNOWN (v1): then the
    connection is the balancer's own and its socket address stands.
    """

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None


@dataclass(frozen=True, slots=True)
class Parsed:
    header: ProxyHeader
    # Bytes of `data` the header took; the wire protocol starts after them.
    consumed: int


def parse(data: bytes) -> Parsed | _NeedData:
    """Parse a PROXY header at the start of `data`.

    Returns NEED_DATA while `data` could still become a valid header.
    Raises ProxyHeaderError when it cannot.
    """
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    if V2_SIGNATURE.startswith(data) or V1_PREFIX.startswith(data):
        return NEED_DATA  # a prefix of one of the two (or nothing yet)
    raise ProxyHeaderError("no PROXY protocol header (neither v1 'PROXY ' nor the v2 signature)")


def _parse_v2(data: bytes) -> Parsed | _NeedData:
    if len(data) < V2_FIXED_BYTES:
        return NEED_DATA
    ver_cmd, fam, length = struct.unpack_from("!BBH", data, len(V2_SIGNATURE))
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2: version {ver_cmd >> 4} is not 2")
    command = ver_cmd & 0x0F
    if command not in (_CMD_LOCAL, _CMD_PROXY):
        raise ProxyHeaderError(f"PROXY v2: unknown command {command}")
    total = V2_FIXED_BYTES + length
    if total > V2_MAX_BYTES:
        raise ProxyHeaderError(f"PROXY v2: header of {total} bytes is over {V2_MAX_BYTES}")
    family, transport = fam >> 4, fam & 0x0F
    if family > _FAM_UNIX or transport > 2:
        raise ProxyHeaderError(f"PROXY v2: unknown family/transport byte 0x{fam:02x}")
    need = {_FAM_INET: _INET_BYTES, _FAM_INET6: _INET6_BYTES, _FAM_UNIX: _UNIX_BYTES}.get(family, 0)
    if length < need:
        raise ProxyHeaderError(
            f"PROXY v2: length {length} is too short for its addresses ({need} bytes)"
        )
    if len(data) < total:
        return NEED_DATA
    body = data[V2_FIXED_BYTES:total]
    if command == _CMD_LOCAL or family in (_FAM_UNSPEC, _FAM_UNIX):
        # LOCAL: the balancer's own connection (health check). UNSPEC/UNIX: no IP address
        # to report; the receiver keeps the socket's address (spec, section 2.2).
        return Parsed(ProxyHeader(2, None, None), total)
    if transport != _TRANSPORT_STREAM:
        raise ProxyHeaderError("PROXY v2: a TCP listener expects the STREAM transport")
    if family == _FAM_INET:
        src_b, dst_b, sport, dport = body[0:4], body[4:8], *struct.unpack_from("!HH", body, 8)
    else:
        src_b, dst_b, sport, dport = body[0:16], body[16:32], *struct.unpack_from("!HH", body, 32)
    src, dst = _plain(ipaddress.ip_address(src_b)), _plain(ipaddress.ip_address(dst_b))
    return Parsed(ProxyHeader(2, (src, sport), (dst, dport)), total)


def _parse_v1(data: bytes) -> Parsed | _NeedData:
    end = data.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(data) >= V1_MAX_BYTES:
            raise ProxyHeaderError(f"PROXY v1: no CRLF within {V1_MAX_BYTES} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyHeaderError("PROXY v1: the line must end with CRLF")
        return NEED_DATA
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1: the line is not ASCII") from None
    parts = line.split(" ")
    consumed = end + 2
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        # The balancer does not know the client (spec: the rest of the line is ignored).
        return Parsed(ProxyHeader(1, None, None), consumed)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1: expected 'PROXY TCP4|TCP6 src dst sport dport'")
    want = ipaddress.IPv4Address if parts[1] == "TCP4" else ipaddress.IPv6Address
    try:
        src, dst = want(parts[2]), want(parts[3])
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1: bad {parts[1]} address") from None
    ports = [_port(p) for p in parts[4:6]]
    return Parsed(ProxyHeader(1, (_plain(src), ports[0]), (_plain(dst), ports[1])), consumed)


def plain_address(text: str) -> str:
    """An address as the collector keys it: IPv4-mapped IPv6 (`::ffff:192.0.2.1`, what a
    dual-stack socket reports for an IPv4 client) as plain IPv4; anything else unchanged.

    Raises ValueError when `text` is not an IP address."""
    return _plain(ipaddress.ip_address(text))


def _plain(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped if mapped is not None else ip)


def _port(text: str) -> int:
    # Spec: decimal, 0..65535, no leading zero (except "0" itself), no sign.
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"PROXY v1: bad port {text[:8]!r}")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"PROXY v1: port {port} out of range")
    return port


def build_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v2 PROXY header for a TCP connection (what HAProxy's send-proxy-v2 writes; tests)."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be the same IP version")
    fam = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, fam, len(body)) + body


def build_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 PROXY line for a TCP connection (what HAProxy's send-proxy writes; tests)."""
    proto = "TCP4" if ipaddress.ip_address(source[0]).version == 4 else "TCP6"
    line = f"PROXY {proto} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
    return line.encode("ascii")
