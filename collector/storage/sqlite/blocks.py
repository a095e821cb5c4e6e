"""The block codec: one series' readings in one time window, packed into bytes and back.

A block holds the sorted, de-duplicated timestamps and values of one (series, window).
Byte 0 is the format version; `decode` reads all three, `encode` writes version 3 for a
numeric column (ints, floats or both: collector.storage.sqlite.numeric_blocks, through
pcodec) and version 1 for any other (text, None, bools, numbers beyond int64); small blocks
are written in version 2 (`encode_plain`). docs/storage.md has the byte-by-byte formats.

Version 1 (`encode_deflate`):

    byte 0      FORMAT_VERSION (1)
    byte 1      value codec: INT_DELTA, FLOAT_DECIMAL, FLOAT_XOR, GENERIC or NUMBER_DECIMAL
    byte 2      decimal scale k (FLOAT_DECIMAL and NUMBER_DECIMAL, else 0)
    varint      n, the number of readings (LEB128, unsigned)
    varint      u, the timestamp unit: the gcd of the deltas (1 when n = 1)
    rest        raw DEFLATE (RFC 1951) of the timestamp column followed by the value column

The timestamp column is n little-endian int64 words [t0, d1, d2 - d1, d3 - d2, ...] where
di = (ti - ti-1) / u (delta-of-delta, Gorilla-style; dividing by u makes a millisecond or
second clock cost what it would in those units), byte-shuffled: all first bytes, then all
second bytes, and so on, so the mostly-zero high bytes form long runs DEFLATE squeezes to
almost nothing.
Value columns:
    INT_DELTA      n int64 words [v0, v1 - v0, ...], byte-shuffled (integers, bools as 0/1)
    FLOAT_DECIMAL  as INT_DELTA over round(v * 10**k); decoding is (n / 10**k), checked
                   bit-for-bit at encode time, so sensor values with a few decimals round-trip
                   exactly and cost about one byte each
    FLOAT_XOR      n uint64 words [bits(v0), bits(v1) ^ bits(v0), ...], byte-shuffled
    GENERIC        a msgpack array of the values (text, None, or mixed types)
    NUMBER_DECIMAL as FLOAT_DECIMAL, for a column mixing ints and floats (a float kind read
                   back through NUMERIC affinity gives 20 for 20.0), then n flag bytes,
                   1 where the value is an int (decoded as n // 10**k)

Format version 2 (PLAIN_VERSION) is the cheap form of the compactor's first level, small
blocks of a minute that live until their hour is merged: byte 0 is 2, the rest one msgpack
array [timestamps, values]. Writing it costs a few microseconds per block where version 1's
column transforms and DEFLATE cost ~70; it is 2-3x larger, for an hour at most.

Everything per value runs in C (array, map, itertools, zlib, slicing). Measured against a
pure-Python Gorilla bit stream on quantised sensor floats, this is less than half the size
and faster to encode and decode (docs/benchmarks.md, "Storage engine"); version 3 is
smaller again and several times cheaper on numeric columns ("Block codec v3").

Pure: no I/O, no SQL, no logging.
"""

from __future__ import annotations

import math
import operator
import sys
import zlib
from array import array
from collections.abc import Iterator, Sequence
from itertools import accumulate, repeat
from typing import Final, NamedTuple, TypeAlias

import msgpack

from collector.storage.sqlite import numeric_blocks

Value: TypeAlias = numeric_blocks.Value

FORMAT_VERSION: Final = 1
PLAIN_VERSION: Final = 2
PCO_VERSION: Final = numeric_blocks.VERSION
_PLAIN_BYTE: Final = bytes((PLAIN_VERSION,))
_PCO_BYTE: Final = bytes((PCO_VERSION,))
INT_DELTA: Final = 0
FLOAT_DECIMAL: Final = 1
FLOAT_XOR: Final = 2
GENERIC: Final = 3
NUMBER_DECIMAL: Final = 4

# No block spans more than this: readers look this far before `since` for blocks that
# straddle it, and the compactor refuses larger windows.
MAX_WINDOW_NS: Final = 86_400 * 10**9
# Largest decimal scale tried: 10**12 keeps |n| < 2**63 for values up to ~9.2e6.
MAX_DECIMAL_SCALE: Final = 12
# How many leading values pick the decimal scale before the whole column is checked.
_SCALE_SAMPLE: Final = 32
# DEFLATE level: 6 measured within 2% of 9 on sensor data at half the cost.
DEFLATE_LEVEL: Final = 6
_WORD_BYTES: Final = 8
_LITTLE: Final = sys.byteorder == "little"


class BlockFormatError(ValueError):
    """The bytes are not a block this version can read (corrupt or from a newer version)."""


class Summary(NamedTuple):
    """What sits beside a block's bytes so aggregates need not decode them.

    min, max and sum are None when any value is not numeric (text, None): such blocks are
    always decoded by aggregates. A tuple: the compactor builds one per small block, and a
    frozen dataclass measured 3x slower to construct.
    """

    count: int  # type: ignore[assignment]  # shadows tuple.count, which nothing calls
    first_ts: int
    last_ts: int
    first_value: Value
    last_value: Value
    min: int | float | None
    max: int | float | None
    sum: int | float | None


def summarize(ts: Sequence[int], values: Sequence[Value]) -> Summary:
    """Count, first/last and (numeric blocks only) min/max/sum of sorted readings."""
    if not ts:
        raise ValueError("an empty block has no summary")
    numeric = set(map(type, values)) <= {int, float}
    lo: int | float | None = None
    hi: int | float | None = None
    total: int | float | None = None
    if numeric:
        nums: Sequence[int | float] = values  # type: ignore[assignment]  # checked just above
        lo, hi = min(nums), max(nums)
        total = sum(nums)
        # SQLite integers are 64-bit: a larger exact sum is stored as a float.
        if type(total) is int and not -(2**63) <= total < 2**63:
            total = float(total)
    return Summary(len(ts), ts[0], ts[-1], values[0], values[-1], lo, hi, total)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = 0
    n = 0
    while True:
        if pos >= len(data):
            raise BlockFormatError("truncated varint")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7
        if shift > 63:
            raise BlockFormatError("varint too long")


def _shuffle(words: array[int]) -> bytes:
    if not _LITTLE:
        words = array(words.typecode, words)
        words.byteswap()
    raw = words.tobytes()
    return b"".join(raw[i::_WORD_BYTES] for i in range(_WORD_BYTES))


def _unshuffle(raw: bytes, n: int, typecode: str) -> array[int]:
    out = bytearray(n * _WORD_BYTES)
    for i in range(_WORD_BYTES):
        out[i::_WORD_BYTES] = raw[i * n : (i + 1) * n]
    words = array(typecode)
    words.frombytes(bytes(out))
    if not _LITTLE:
        words.byteswap()
    return words


def _deltas(xs: Sequence[int]) -> list[int]:
    return [xs[0], *map(operator.sub, xs[1:], xs[:-1])]


def _ts_column(ts: Sequence[int]) -> tuple[int, bytes]:
    """(unit, column): deltas are divided by their gcd, so ms or s clocks pack as small.

    Raises ValueError unless the timestamps are strictly increasing (checked on the deltas
    the column needs anyway).
    """
    if len(ts) < 2:
        return 1, _shuffle(array("q", ts))
    d = list(map(operator.sub, ts[1:], ts[:-1]))
    if min(d) <= 0:
        raise ValueError("timestamps must be strictly increasing")
    unit = math.gcd(*d)
    if unit > 1:
        d = list(map(operator.floordiv, d, repeat(unit)))
    return unit, _shuffle(array("q", [ts[0], d[0], *map(operator.sub, d[1:], d[:-1])]))


def _decode_ts(words: array[int], unit: int) -> list[int]:
    if len(words) < 2:
        return list(words)
    deltas: Iterator[int] = accumulate(words[1:])
    if unit != 1:
        deltas = map(operator.mul, deltas, repeat(unit))
    return list(accumulate(deltas, initial=words[0]))


def _decimal_scale(values: Sequence[Value], sample: int | None) -> int | None:
    """Decimals needed by the first `sample` floats (all if None); None if not decimal."""
    k = seen = 0
    for v in values:
        if type(v) is not float:
            continue
        r = repr(v)
        if "e" in r or "n" in r:  # 1e-05, inf, nan: not worth scaling
            return None
        k = max(k, len(r[r.index(".") + 1 :].rstrip("0")))
        if k > MAX_DECIMAL_SCALE:
            return None
        seen += 1
        if seen == sample:
            break
    return k


def _scaled(values: Sequence[Value], k: int) -> list[int] | None:
    """round(v * 10**k) for each number if dividing back gives the same bits, else None.

    Integers scale exactly (and decode with //); the bit check is what matters for floats.
    """
    m = 10**k
    nums: Sequence[float] = values  # type: ignore[assignment]  # ints and floats only
    try:
        scaled = list(map(round, map(operator.mul, nums, repeat(m))))
        back = array("d", map(operator.truediv, scaled, repeat(m)))
        return scaled if back.tobytes() == array("d", nums).tobytes() else None
    except (OverflowError, ValueError):  # inf * m, nan
        return None


def _encode_values(values: Sequence[Value]) -> tuple[int, int, bytes]:
    types = set(map(type, values))
    if types == {int}:
        try:
            return INT_DELTA, 0, _shuffle(array("q", _deltas(values)))  # type: ignore[arg-type]  # all ints
        except OverflowError:
            pass  # deltas beyond int64: GENERIC below keeps them exact
    elif types <= {int, float}:
        mixed = int in types  # float kinds stored under NUMERIC affinity: 20.0 reads back 20
        k = _decimal_scale(values, _SCALE_SAMPLE)
        scaled = None if k is None else _scaled(values, k)
        if k is not None and scaled is None:  # the sample had fewer decimals than the rest
            k = _decimal_scale(values, None)
            scaled = None if k is None else _scaled(values, k)
        if k is not None and scaled is not None:
            try:
                column = _shuffle(array("q", _deltas(scaled)))
            except OverflowError:
                column = b""  # scaled deltas beyond int64
            if column and mixed:
                return NUMBER_DECIMAL, k, column + bytes([type(v) is int for v in values])
            if column:
                return FLOAT_DECIMAL, k, column
        if not mixed:
            bits = array("q")
            floats: Sequence[float] = values  # type: ignore[assignment]  # all floats
            bits.frombytes(array("d", floats).tobytes())
            xor = [bits[0], *map(operator.xor, bits[1:], bits)]
            return FLOAT_XOR, 0, _shuffle(array("q", xor))
    return GENERIC, 0, msgpack.packb(list(values), use_bin_type=True)


def encode(ts: Sequence[int], values: Sequence[Value]) -> bytes:
    """Pack sorted, unique timestamps and their values into a block: version 3 (pcodec)
    for a numeric column, version 1 for any other.

    Raises ValueError if the lengths differ, the block is empty or timestamps are not
    strictly increasing.
    """
    packed = numeric_blocks.encode(ts, values)
    return packed if packed is not None else encode_deflate(ts, values)


def encode_column(
    ts: numeric_blocks.Int64s, column: numeric_blocks.Int64s | numeric_blocks.Float64s
) -> bytes:
    """`encode` for readings already in numpy columns (int64 timestamps; int64 ints or
    float64 floats): the same bytes, without a Python object per reading.

    Raises ValueError like `encode`.
    """
    packed = numeric_blocks.encode_column(ts, column)
    return packed if packed is not None else encode_deflate(ts.tolist(), column.tolist())


def encode_deflate(ts: Sequence[int], values: Sequence[Value]) -> bytes:
    """Pack readings as a version-1 block (any values; what `encode` wrote before
    version 3, kept for the columns pcodec cannot take).

    Raises ValueError like `encode`.
    """
    n = len(ts)
    if n == 0 or n != len(values):
        raise ValueError(f"need as many values as timestamps, at least one: {n} != {len(values)}")
    unit, tcolumn = _ts_column(ts)
    codec, scale, vbytes = _encode_values(values)
    body = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
    payload = body.compress(tcolumn) + body.compress(vbytes) + body.flush()
    return bytes((FORMAT_VERSION, codec, scale)) + _varint(n) + _varint(unit) + payload


def encode_plain(ts: Sequence[int], values: Sequence[Value]) -> bytes:
    """Pack readings as a version-2 block: fast to write and read, not compressed.

    Raises ValueError like `encode`.
    """
    n = len(ts)
    if n == 0 or n != len(values):
        raise ValueError(f"need as many values as timestamps, at least one: {n} != {len(values)}")
    if any(map(operator.ge, ts[:-1], ts[1:])):
        raise ValueError("timestamps must be strictly increasing")
    return bytes((PLAIN_VERSION,)) + msgpack.packb([list(ts), list(values)], use_bin_type=True)


def _decode_plain(data: bytes) -> tuple[list[int], list[Value]]:
    try:
        unpacked = msgpack.unpackb(data[1:], raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise BlockFormatError(f"corrupt plain block: {exc}") from exc
    if (
        not isinstance(unpacked, list)
        or len(unpacked) != 2
        or not isinstance(unpacked[0], list)
        or not isinstance(unpacked[1], list)
        or not unpacked[0]
        or len(unpacked[0]) != len(unpacked[1])
    ):
        raise BlockFormatError("a plain block is [timestamps, values] of one non-zero length")
    return unpacked[0], unpacked[1]


def decode(data: bytes) -> tuple[list[int], list[Value]]:
    """Unpack a block into (timestamps, values), both in timestamp order.

    Raises BlockFormatError on bytes that are not a version-1, 2 or 3 block.
    """
    if data[:1] == _PCO_BYTE:
        try:
            return numeric_blocks.decode(data)
        except numeric_blocks.ColumnError as exc:
            raise BlockFormatError(str(exc)) from exc
    if data[:1] == _PLAIN_BYTE:
        return _decode_plain(data)
    if len(data) < 4 or data[0] != FORMAT_VERSION:
        raise BlockFormatError(f"unknown block version {data[:1]!r}")
    codec, scale = data[1], data[2]
    n, pos = _read_varint(data, 3)
    unit, pos = _read_varint(data, pos)
    if n == 0 or unit == 0:
        raise BlockFormatError("empty block or zero timestamp unit")
    try:
        raw = zlib.decompress(data[pos:], -15)
    except zlib.error as exc:
        raise BlockFormatError(f"corrupt block payload: {exc}") from exc
    tlen = n * _WORD_BYTES
    if len(raw) < tlen:
        raise BlockFormatError("truncated timestamp column")
    ts = _decode_ts(_unshuffle(raw[:tlen], n, "q"), unit)
    vraw = raw[tlen:]
    values: list[Value]
    if codec == GENERIC:
        try:
            unpacked = msgpack.unpackb(vraw, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise BlockFormatError(f"corrupt value column: {exc}") from exc
        if not isinstance(unpacked, list) or len(unpacked) != n:
            raise BlockFormatError("value column does not match the timestamp count")
        values = unpacked
    elif len(vraw) != (tlen + n if codec == NUMBER_DECIMAL else tlen):
        raise BlockFormatError("value column does not match the timestamp count")
    elif codec == NUMBER_DECIMAL:
        m = 10**scale
        flags = vraw[tlen:]
        scaled = accumulate(_unshuffle(vraw[:tlen], n, "q"))
        values = [v // m if f else v / m for v, f in zip(scaled, flags, strict=True)]
    elif codec == INT_DELTA:
        values = list(accumulate(_unshuffle(vraw, n, "q")))
    elif codec == FLOAT_DECIMAL:
        m = 10**scale
        values = [v / m for v in accumulate(_unshuffle(vraw, n, "q"))]
    elif codec == FLOAT_XOR:
        bits = array("q", accumulate(_unshuffle(vraw, n, "q"), operator.xor))
        floats = array("d")
        floats.frombytes(bits.tobytes())
        values = list(floats)
    else:
        raise BlockFormatError(f"unknown value codec {codec}")
    return ts, values
