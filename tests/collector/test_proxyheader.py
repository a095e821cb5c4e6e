"""PROXY protocol header parser: hand-built v1 and v2 headers, truncation, limits, garbage."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.ingest import proxyheader as ph
from collector.ingest.proxyheader import NEED_DATA, ProxyHeaderError, parse

SIG = ph.V2_SIGNATURE


def v2(ver_cmd: int, fam: int, body: bytes) -> bytes:
    return SIG + struct.pack("!BBH", ver_cmd, fam, len(body)) + body


# What HAProxy sent in a capture (client 172.19.0.1:42578 to 172.19.0.3:80), then HTTP.
CAPTURED = (
    bytes.fromhex("0d0a0d0a000d0a515549540a2111000cac130001ac130003a6520050")
    + b"GET / HTTP/1.1\r\n"
)


def test_v2_tcp4_from_a_capture() -> None:
    out = parse(CAPTURED)
    assert isinstance(out, ph.Parsed)
    assert out.header == ph.ProxyHeader(2, ("172.19.0.1", 42578), ("172.19.0.3", 80))
    assert CAPTURED[out.consumed :] == b"GET / HTTP/1.1\r\n"


def test_v2_tcp6_and_tlvs_skipped() -> None:
    src, dst = "2001:db8::1", "2001:db8::2"
    base = ph.build_v2((src, 50000), (dst, 7878))
    tlv = bytes([0x01, 0x00, 0x02]) + b"h2" + bytes([0x04, 0x00, 0x00])  # ALPN, NOOP
    body = base[16:] + tlv
    header = v2(0x21, 0x21, body)
    out = parse(header + b"\x00\x00\x00\x10rest")
    assert isinstance(out, ph.Parsed)
    assert out.header.source == (src, 50000)
    assert out.header.destination == (dst, 7878)
    assert out.consumed == len(header)


def test_v2_local_has_no_address() -> None:
    out = parse(v2(0x20, 0x00, b""))
    assert isinstance(out, ph.Parsed)
    assert out.header == ph.ProxyHeader(2, None, None)
    assert out.consumed == 16
    # LOCAL with addresses (HAProxy health checks may send them): still no client.
    out = parse(v2(0x20, 0x11, bytes(12)))
    assert isinstance(out, ph.Parsed) and out.header.source is None and out.consumed == 28


def test_v2_unspec_and_unix_keep_the_socket_address() -> None:
    for fam, body in ((0x00, b""), (0x31, bytes(216))):
        out = parse(v2(0x21, fam, body))
        assert isinstance(out, ph.Parsed) and out.header.source is None


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (v2(0x11, 0x11, bytes(12)), "version 1 is not 2"),
        (v2(0x31, 0x11, bytes(12)), "version 3 is not 2"),
        (v2(0x22, 0x11, bytes(12)), "unknown command 2"),
        (v2(0x21, 0x41, bytes(12)), "family/transport"),
        (v2(0x21, 0x13, bytes(12)), "family/transport"),
        (v2(0x21, 0x11, bytes(11)), "too short"),
        (v2(0x21, 0x21, bytes(35)), "too short"),
        (v2(0x21, 0x12, bytes(12)), "STREAM"),
    ],
)
def test_v2_invalid(header: bytes, message: str) -> None:
    with pytest.raises(ProxyHeaderError, match=message):
        parse(header)


def test_v2_oversized_is_refused_before_its_body_arrives() -> None:
    fixed = SIG + struct.pack("!BBH", 0x21, 0x11, ph.V2_MAX_BYTES)
    with pytest.raises(ProxyHeaderError, match="over"):
        parse(fixed)
    # The largest accepted size parses once complete.
    body = bytes(ph.V2_MAX_BYTES - 16)
    assert isinstance(parse(v2(0x21, 0x11, body)), ph.Parsed)


def test_v1_tcp4_tcp6_unknown() -> None:
    line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 7878\r\n"
    out = parse(line + b"\x00\x00")
    assert isinstance(out, ph.Parsed)
    assert out.header == ph.ProxyHeader(1, ("192.0.2.7", 56324), ("10.0.0.1", 7878))
    assert out.consumed == len(line)
    out = parse(b"PROXY TCP6 2001:db8::7 ::1 1 65535\r\n")
    assert isinstance(out, ph.Parsed) and out.header.source == ("2001:db8::7", 1)
    out = parse(b"PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n")
    assert isinstance(out, ph.Parsed) and out.header.source is None


def test_v1_longest_line_fits_and_one_more_byte_does_not() -> None:
    addr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    longest = f"PROXY UNKNOWN {addr} {addr} 65535 65535\r\n".encode()
    assert len(longest) == ph.V1_MAX_BYTES
    assert isinstance(parse(longest), ph.Parsed)
    with pytest.raises(ProxyHeaderError, match="no CRLF"):
        parse(longest[:-2] + b"0\r\n")


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.7 10.0.0.1 56324\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 7878 extra\r\n",
        b"PROXY TCP5 192.0.2.7 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 ::1 10.0.0.1 1 2\r\n",
        b"PROXY TCP6 192.0.2.7 ::1 1 2\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 2\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 01 2\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 -1 2\r\n",
        b"PROXY TCP4  192.0.2.7 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\n",
        b"PROXY TCP4 192.0.2.\xff 10.0.0.1 1 2\r\n",
    ],
)
def test_v1_invalid(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(line)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x10",  # a wire-protocol frame length: an agent speaking directly
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
        b"proxy TCP4 ",
        b"\r\n\r\n\x00\r\nQUIZ\n",
    ],
)
def test_garbage_is_refused_at_once(garbage: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(garbage)


@pytest.mark.parametrize(
    "header",
    [
        CAPTURED[:28],
        ph.build_v2(("2001:db8::1", 1), ("2001:db8::2", 2)),
        ph.build_v1(("192.0.2.1", 40000), ("192.0.2.2", 7878)),
        v2(0x20, 0x00, b""),
    ],
)
def test_every_truncation_needs_data(header: bytes) -> None:
    for cut in range(len(header)):
        assert parse(header[:cut]) is NEED_DATA, cut
    assert isinstance(parse(header), ph.Parsed)


def test_ipv4_mapped_addresses_are_plain_ipv4() -> None:
    out = parse(ph.build_v2(("::ffff:192.0.2.1", 1), ("::ffff:10.0.0.1", 2)))
    assert isinstance(out, ph.Parsed)
    assert out.header.source == ("192.0.2.1", 1)
    assert out.header.destination == ("10.0.0.1", 2)
    out = parse(b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n")
    assert isinstance(out, ph.Parsed) and out.header.source == ("192.0.2.1", 1)
    assert ph.plain_address("::ffff:127.0.0.1") == "127.0.0.1"
    assert ph.plain_address("2001:db8::1") == "2001:db8::1"
    with pytest.raises(ValueError):
        ph.plain_address("not an address")


def test_builders_round_trip() -> None:
    for build, version in ((ph.build_v1, 1), (ph.build_v2, 2)):
        for src, dst in ((("10.1.2.3", 4), ("10.9.9.9", 7878)), (("::1", 5), ("::2", 6))):
            out = parse(build(src, dst))
            assert isinstance(out, ph.Parsed)
            assert out.header == ph.ProxyHeader(version, src, dst)


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_the_modules_error(data: bytes) -> None:
    try:
        out = parse(data)
    except ProxyHeaderError:
        return
    assert out is NEED_DATA or (isinstance(out, ph.Parsed) and out.consumed <= len(data))


@given(
    st.sampled_from([SIG, b"PROXY "]),
    st.binary(max_size=300),
)
def test_random_tails_after_a_valid_start_raise_only_the_modules_error(
    start: bytes, tail: bytes
) -> None:
    try:
        out = parse(start + tail)
    except ProxyHeaderError:
        return
    assert out is NEED_DATA or isinstance(out, ph.Parsed)
