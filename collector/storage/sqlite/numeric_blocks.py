"""Version-3 blocks: a numeric series' timestamps and values packed by pcodec.

Columns of ints, of floats, or of ints and floats mixed go through pcodec (the `pcodec`
package: Rust, lossless, numeric columns only); every other column (text, None, bools,
ints beyond int64) stays with version 1 (collector.storage.sqlite.blocks). Layout
(docs/storage.md, "Block format (version 3)", has the byte-by-byte description):

    byte 0      3
    byte 1      value kind: INT, FLOAT, FLOAT_DECIMAL, NUMBER or NUMBER_DECIMAL
    byte 2      decimal scale k (the two decimal kinds, else 0)
    varint      n, the number of readings
    timestamps  REGULAR (t0 and one step) or PCO (a length, then a pcodec section)
    int marks   the two NUMBER kinds: where the type is not the one the value implies
    values      a pcodec section of n int64 (INT, the decimal kinds) or float64 words
    4 bytes     CRC-32 of everything before it, little-endian

A pcodec section is pcodec's wrapped format: file header, chunk metadata, one page of
exactly n numbers (n is in the block, so the section need not repeat it).

Decimal kinds: a float column whose values are all round(v * 10**k) / 10**k, bit for bit,
for one k <= 12, is stored as the integers round(v * 10**k): the decoder divides by 10**k.
Quantised sensor values (0.01 °C, 0.1 %) then cost what their integer steps cost, where
pcodec's own float modes keep a correction of a few bits per value.

Mixed columns (a client that sends 21 for 21.0 and 21.5 for 21.5) keep each value's
Python type: a value is an int where its float is integral (finite, not -0.0), a float
elsewhere, and the block lists the positions where that rule is wrong (usually none).

Pure: no I/O, no SQL, no logging. Corrupt bytes raise `ColumnError`, never another
exception (the CRC catches accidental damage before pcodec sees the bytes).
"""

from __future__ import annotations

import operator
import zlib
from collections.abc import Sequence
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt

# pcodec ships no type information; its few calls are wrapped below.
from pcodec import ChunkConfig, PagingSpec, wrapped  # type: ignore[import-untyped]

Value: TypeAlias = int | float | str | None
Int64s: TypeAlias = npt.NDArray[np.int64]
Float64s: TypeAlias = npt.NDArray[np.float64]

VERSION: Final = 3
INT: Final = 0
FLOAT: Final = 1
FLOAT_DECIMAL: Final = 2
NUMBER: Final = 3
NUMBER_DECIMAL: Final = 4
TS_REGULAR: Final = 0
TS_PCO: Final = 1

# More readings than this go to version 1. It bounds what a damaged count can make the
# decoder allocate (4M readings: one series at 48 Hz for a day, the longest block).
MAX_READINGS: Final = 1 << 22
# Largest decimal scale tried, as in version 1.
MAX_DECIMAL_SCALE: Final = 12
# Leading values that pick the decimal scale before the whole column is checked.
_SCALE_SAMPLE: Final = 32
# Scaled values stay within 2**53, where int64 -> float64 is exact, so the decoder's
# float64 division gives the correctly rounded s / 10**k.
_EXACT_FLOAT_INT: Final = 2**53
# pcodec's compression level (its default is 8): on bench/load.py's sensors levels 2-8 are
# within 0.2% of each other in size, and 4 was the smallest; 8 costs twice the CPU on
# full-precision floats.
PCO_LEVEL: Final = 4
_CRC_BYTES: Final = 4
_DTYPES: Final = {np.dtype(np.int64): "i64", np.dtype(np.float64): "f64"}


class ColumnError(ValueError):
    """The bytes are not a well-formed version-3 block."""


# --- varints -------------------------------------------------------------------------


def _varint(n: int, out: bytearray) -> None:
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        if pos >= end:
            raise ColumnError("truncated varint")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7
        if shift > 63:
            raise ColumnError("varint too long")


def _zigzag(n: int) -> int:
    return n * 2 if n >= 0 else -n * 2 - 1


def _unzigzag(z: int) -> int:
    return z >> 1 if not z & 1 else -(z >> 1) - 1


# --- pcodec sections -----------------------------------------------------------------


def _pco(column: Int64s | Float64s) -> bytes:
    """One pcodec section: header, chunk metadata, one page of all the numbers."""
    config = ChunkConfig(
        compression_level=PCO_LEVEL, paging_spec=PagingSpec.exact_page_sizes([len(column)])
    )
    file = wrapped.FileCompressor()
    chunk = file.chunk_compressor(column, config)
    return bytes(file.write_header() + chunk.write_meta() + chunk.write_page(0))


def _unpco(section: bytes, out: Int64s | Float64s) -> None:
    """Fill `out` with the numbers of a pcodec section, which must hold exactly len(out)
    of them and nothing after.

    Raises ColumnError on anything pcodec refuses or a count that does not match.
    """
    n = len(out)
    try:
        file, pos = wrapped.FileDecompressor.new(section)
        chunk, used = file.chunk_decompressor(section[pos:], _DTYPES[out.dtype])
        pos += used
        progress, used = chunk.read_page_into(section[pos:], n, out)
    except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
        raise ColumnError(f"corrupt pcodec section: {exc}") from exc
    if progress.n_processed != n or not progress.finished or pos + used != len(section):
        raise ColumnError("pcodec section does not hold exactly the block's readings")


def _ints(section: bytes, n: int) -> Int64s:
    out = np.empty(n, dtype=np.int64)
    _unpco(section, out)
    return out


def _floats(section: bytes, n: int) -> Float64s:
    out = np.empty(n, dtype=np.float64)
    _unpco(section, out)
    return out


# --- encoding ------------------------------------------------------------------------


def _timestamps(col: Int64s, out: bytearray) -> None:
    """Append the timestamp column (strictly increasing, checked by the caller)."""
    steps = np.diff(col)
    if len(steps) == 0 or (steps == steps[0]).all():
        out.append(TS_REGULAR)
        _varint(_zigzag(int(col[0])), out)
        if len(steps):
            _varint(int(steps[0]), out)
        return
    out.append(TS_PCO)
    section = _pco(col)
    _varint(len(section), out)
    out += section


_SCALES: Final = (10.0 ** np.arange(MAX_DECIMAL_SCALE + 1))[:, None]  # a column: 1, 10, ...


def _scaled(floats: Float64s) -> tuple[int, Int64s] | None:
    """(k, s) with s / 10**k equal to `floats` bit for bit (as the decoder computes it), for
    the smallest k that fits a leading sample and then the whole column."""
    if not np.isfinite(floats).all():
        return None
    top = float(np.abs(floats).max())
    if top >= _EXACT_FLOAT_INT:
        return None
    # Scales that keep every s within 2**53, exact as a float64.
    scales = _SCALES[_SCALES[:, 0] < _EXACT_FLOAT_INT / top] if top else _SCALES
    sample = floats[:_SCALE_SAMPLE]
    # Every usable scale at once on the sample: a (scales x sample) grid of quotients.
    back = np.rint(sample * scales) / scales
    for k in np.flatnonzero((back.view(np.int64) == sample.view(np.int64)).all(axis=1)):
        m = float(scales[k, 0])
        s = np.rint(floats * m).astype(np.int64)
        if np.array_equal((s / m).view(np.int64), floats.view(np.int64)):
            return int(k), s
    return None


def _integral(x: Float64s) -> npt.NDArray[np.bool_]:
    """Where a float64 value is integral, finite and not -0.0: where a NUMBER holds ints."""
    with np.errstate(invalid="ignore"):
        integral: npt.NDArray[np.bool_] = (
            np.isfinite(x) & (np.floor(x) == x) & ~((x == 0) & np.signbit(x))
        )
    return integral


def _int_positions(values: Sequence[Value]) -> npt.NDArray[np.bool_] | None:
    """Where an int/float column holds ints, or None if an int is not exact as a float64."""
    is_int = np.fromiter((type(v) is int for v in values), dtype=np.bool_, count=len(values))
    ints: list[int] = [v for v in values if type(v) is int]
    return is_int if max(map(abs, ints)) <= _EXACT_FLOAT_INT else None


def _marks(out: bytearray, wrong: npt.NDArray[np.bool_]) -> None:
    """Append the positions where the decoder's type rule is wrong."""
    marks = np.flatnonzero(wrong).tolist()
    _varint(len(marks), out)
    last = -1
    for i in marks:
        _varint(i - last - 1, out)
        last = i


def encode(ts: Sequence[int], values: Sequence[Value]) -> bytes | None:
    """A version-3 block of the readings, or None when they are not for pcodec (a type
    other than int and float, a number beyond int64, too many readings, timestamps that
    span more than int64).

    Raises ValueError unless there are as many values as timestamps, at least one, and
    the timestamps are strictly increasing.
    """
    n = len(ts)
    if n == 0 or n != len(values):
        raise ValueError(f"need as many values as timestamps, at least one: {n} != {len(values)}")
    if any(map(operator.ge, ts[:-1], ts[1:])):
        raise ValueError("timestamps must be strictly increasing")
    types = set(map(type, values))
    if n > MAX_READINGS or not types <= {int, float} or ts[-1] - ts[0] >= 2**63:
        return None
    try:
        tcol = np.array(ts, dtype=np.int64)
        ints = np.array(values, dtype=np.int64) if types == {int} else None
    except OverflowError:
        return None
    if ints is not None:
        return _pack(tcol, INT, 0, ints, None)
    is_int = None  # where a mixed column holds ints
    if int in types:
        is_int = _int_positions(values)
        if is_int is None:
            return None
    return _pack_floats(tcol, np.array(values, dtype=np.float64), is_int)


def encode_column(tcol: Int64s, column: Int64s | Float64s) -> bytes | None:
    """`encode` for a column already in one numpy array: int64 (the values are ints) or
    float64 (floats); the same bytes `encode` gives for those readings as lists.

    Raises ValueError like `encode`.
    """
    n = len(tcol)
    if n == 0 or n != len(column):
        raise ValueError(f"need as many values as timestamps, at least one: {n} != {len(column)}")
    if n > 1 and not (tcol[1:] > tcol[:-1]).all():
        raise ValueError("timestamps must be strictly increasing")
    if n > MAX_READINGS or int(tcol[-1]) - int(tcol[0]) >= 2**63:
        return None
    if column.dtype == np.int64:
        return _pack(tcol, INT, 0, column, None)
    return _pack_floats(tcol, column.astype(np.float64, copy=False), None)


def _pack_floats(tcol: Int64s, floats: Float64s, is_int: npt.NDArray[np.bool_] | None) -> bytes:
    """A float column (FLOAT or FLOAT_DECIMAL), or with `is_int` a mixed one (NUMBER or
    NUMBER_DECIMAL, the ints' positions given)."""
    wrong = None  # where the decoder's rule would get a mixed column's type wrong
    scaled = _scaled(floats)
    if scaled is None:
        if is_int is not None:
            wrong = _integral(floats) != is_int  # the rule: ints where integral
        return _pack(tcol, FLOAT if is_int is None else NUMBER, 0, floats, wrong)
    scale, column = scaled
    if is_int is not None:
        wrong = (column % 10**scale == 0) != is_int  # ints where 10**k divides s
    return _pack(tcol, FLOAT_DECIMAL if is_int is None else NUMBER_DECIMAL, scale, column, wrong)


def _pack(
    tcol: Int64s,
    kind: int,
    scale: int,
    column: Int64s | Float64s,
    wrong: npt.NDArray[np.bool_] | None,
) -> bytes:
    out = bytearray((VERSION, kind, scale))
    _varint(len(tcol), out)
    _timestamps(tcol, out)
    if wrong is not None:
        _marks(out, wrong)
    out += _pco(column)
    out += zlib.crc32(out).to_bytes(_CRC_BYTES, "little")
    return bytes(out)


# --- decoding ------------------------------------------------------------------------


def _decode_ts(data: bytes, pos: int, end: int, n: int) -> tuple[list[int], int]:
    mode = data[pos] if pos < end else -1
    if mode == TS_REGULAR:
        z, pos = _read_varint(data, pos + 1, end)
        t0 = _unzigzag(z)
        if n == 1:
            if not -(2**63) <= t0 < 2**63:
                raise ColumnError("timestamp out of range")
            return [t0], pos
        step, pos = _read_varint(data, pos, end)
        if step == 0 or t0 < -(2**63) or t0 + step * (n - 1) >= 2**63:
            raise ColumnError("regular timestamps out of range")
        return list(range(t0, t0 + step * n, step)), pos
    if mode == TS_PCO:
        size, pos = _read_varint(data, pos + 1, end)
        if pos + size > end:
            raise ColumnError("truncated timestamp column")
        col = _ints(data[pos : pos + size], n)
        if n > 1 and not (np.diff(col) > 0).all():
            raise ColumnError("timestamps not strictly increasing")
        return col.tolist(), pos + size
    raise ColumnError(f"unknown timestamp mode {mode}")


def _read_marks(data: bytes, pos: int, end: int, n: int) -> tuple[list[int], int]:
    count, pos = _read_varint(data, pos, end)
    if count > n:
        raise ColumnError("more type marks than readings")
    marks = []
    last = -1
    for _ in range(count):
        gap, pos = _read_varint(data, pos, end)
        last += gap + 1
        marks.append(last)
    if marks and last >= n:
        raise ColumnError("type mark beyond the last reading")
    return marks, pos


def decode(data: bytes) -> tuple[list[int], list[Value]]:
    """(timestamps, values) of a version-3 block.

    Raises ColumnError on bytes that are not one.
    """
    end = len(data) - _CRC_BYTES
    if end < 4 or data[0] != VERSION:
        raise ColumnError("not a version-3 block")
    if zlib.crc32(data[:end]) != int.from_bytes(data[end:], "little"):
        raise ColumnError("checksum mismatch")
    kind, scale = data[1], data[2]
    n, pos = _read_varint(data, 3, end)
    if not 0 < n <= MAX_READINGS:
        raise ColumnError(f"reading count {n} out of range")
    if kind > NUMBER_DECIMAL or scale > MAX_DECIMAL_SCALE:
        raise ColumnError(f"unknown value kind {kind} or scale {scale}")
    ts, pos = _decode_ts(data, pos, end, n)
    marks: list[int] = []
    if kind in (NUMBER, NUMBER_DECIMAL):
        marks, pos = _read_marks(data, pos, end, n)
    section = data[pos:end]
    if kind == INT:
        return ts, _ints(section, n).tolist()
    if kind == FLOAT:
        return ts, _floats(section, n).tolist()
    m = 10**scale
    if kind in (FLOAT_DECIMAL, NUMBER_DECIMAL):
        s = _ints(section, n)
        if int(s.min()) <= -_EXACT_FLOAT_INT or int(s.max()) >= _EXACT_FLOAT_INT:
            raise ColumnError("decimal column beyond the exact float range")
        floats = s / float(m)
        if kind == FLOAT_DECIMAL:
            return ts, floats.tolist()
        is_int = s % m == 0
    else:
        floats = _floats(section, n)
        is_int = _integral(floats)
    if marks:
        is_int[marks] = ~is_int[marks]
    if not np.isfinite(floats[is_int]).all():
        raise ColumnError("an int position holds a float that is not finite")
    values: list[Value] = floats.tolist()
    for i in np.flatnonzero(is_int).tolist():
        values[i] = int(values[i])  # type: ignore[arg-type]  # a finite float here
    return ts, values
