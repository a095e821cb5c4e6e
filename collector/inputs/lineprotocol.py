"""InfluxDB line protocol: parse a request body into points, and encode points (pure).

    measurement[,tag_key=tag_value...] field_key=field_value[,field_key=field_value...] [timestamp]

Rules implemented (InfluxDB 2.x "Line protocol" reference):

- One point per line; `\\n` ends a line (a trailing `\\r` is ignored). Empty lines and
  lines whose first non-blank character is `#` are skipped.
- Escapes: in a measurement `\\,` and `\\ `; in tag keys, tag values and field keys `\\,`,
  `\\=` and `\\ `; everywhere `\\\\` is one backslash, and a backslash before any other
  character is a literal backslash. A newline can only appear inside a string field value.
- Field values: float (`1`, `-1.5`, `2e3`; no NaN or infinity), integer (`1i`, int64),
  unsigned integer (`1u`, uint64), string (`"..."` with `\\"` and `\\\\` escapes; other
  backslashes literal), boolean (`t T true True TRUE f F false False FALSE`).
- Tag values and keys are never empty; a point has at least one field; a repeated field key
  keeps its last value (as InfluxDB does), a repeated tag key is an error.
- The timestamp is an optional signed integer in the request's precision; `parse` returns
  it unscaled (the caller scales it and supplies the receive time when it is absent).

Each line gives either a `Point` or a `LineError` naming its 1-based line number, so a bad
line costs that line only. No I/O, no clock, no storage knowledge in this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

FieldType: TypeAlias = Literal["float", "integer", "uinteger", "boolean", "string"]
FieldValue: TypeAlias = float | int | bool | str

# The dead-letter table keeps the offending line; a line longer than this is cut.
MAX_LINE_TEXT_CHARS: Final = 4096
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1

_MEASUREMENT: Final = re.compile(r"(?:\\.|[^\\, \n])+")
_KEY: Final = re.compile(r"(?:\\.|[^\\,= \n])+")
_SPACES: Final = re.compile(r"[ \t]+")
_STRING: Final = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_NUMBER: Final = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?([iu]?)")
_BOOL: Final = re.compile(r"(?:true|True|TRUE|t|T|false|False|FALSE|f|F)(?=[, \t\r\n]|$)")
_TIMESTAMP: Final = re.compile(r"-?\d+")
_TRAILER: Final = re.compile(r"[ \t]*\r?(?:\n|$)")
_KEY_UNESCAPE: Final = re.compile(r"\\([\\,= ])")
_MEASUREMENT_UNESCAPE: Final = re.compile(r"\\([\\, ])")
_STRING_UNESCAPE: Final = re.compile(r'\\([\\"])')
_TRUE: Final = frozenset({"t", "T", "true", "True", "TRUE"})


@dataclass(frozen=True, slots=True)
class Field:
    key: str
    type: FieldType
    value: FieldValue


@dataclass(frozen=True, slots=True)
class Point:
    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[Field, ...]
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class ParsedLine:
    line: int
    point: Point
    text: str


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    message: str
    text: str


class _Bad(Exception):
    """A line does not parse; the message says why."""


def parse(body: str) -> Iterator[ParsedLine | LineError]:
    """Every non-blank, non-comment line of `body`, as a point or an error, in order.

    Decode the body with errors="surrogateescape": a line holding undecodable bytes is
    answered as a LineError (invalid UTF-8) and the other lines still parse.
    """
    pos, n, line = 0, len(body), 1
    while pos < n:
        end_of_line = body.find("\n", pos)
        end_of_line = n if end_of_line < 0 else end_of_line
        head = body[pos:end_of_line].lstrip(" \t\r")
        if not head or head.startswith("#"):
            pos, line = end_of_line + 1, line + 1
            continue
        start = pos
        try:
            point, pos = _point(body, end_of_line - len(head))
            text = body[start:pos].rstrip("\r\n")
            if _has_surrogates(text):
                raise _Bad("invalid UTF-8")
            yield ParsedLine(line, point, text)
        except _Bad as exc:
            # Skip to the end of the physical line the error is on.
            pos = end_of_line + 1
            yield LineError(line, str(exc), body[start:end_of_line][:MAX_LINE_TEXT_CHARS])
            line += 1
            continue
        line += body.count("\n", start, pos)


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text) if not text.isascii() else False


def _point(s: str, i: int) -> tuple[Point, int]:
    m = _MEASUREMENT.match(s, i)
    if m is None:
        raise _Bad("missing measurement")
    measurement = _MEASUREMENT_UNESCAPE.sub(r"\1", m.group())
    i = m.end()
    tags: dict[str, str] = {}
    while i < len(s) and s[i] == ",":
        key, i = _key(s, i + 1, "tag key")
        if i >= len(s) or s[i] != "=":
            raise _Bad(f"missing tag value for tag key {key!r}")
        value, i = _key(s, i + 1, "tag value")
        if key in tags:
            raise _Bad(f"duplicate tag key {key!r}")
        tags[key] = value
    sp = _SPACES.match(s, i)
    if sp is None:
        raise _Bad("missing fields" if i >= len(s) or s[i] in "\r\n" else "invalid measurement")
    i = sp.end()
    fields: dict[str, Field] = {}
    while True:
        key, i = _key(s, i, "field key")
        if i >= len(s) or s[i] != "=":
            raise _Bad(f"missing field value for field key {key!r}")
        fields.pop(key, None)  # a repeated key keeps its last value, in its last place
        fields[key], i = _field_value(s, i + 1, key)
        if i < len(s) and s[i] == ",":
            i += 1
            continue
        break
    timestamp: int | None = None
    sp = _SPACES.match(s, i)
    if sp is not None:
        i = sp.end()
        ts = _TIMESTAMP.match(s, i)
        if ts is not None:
            timestamp = int(ts.group())
            i = ts.end()
    end = _TRAILER.match(s, i)
    if end is None:
        raise _Bad("invalid timestamp" if sp is not None else "invalid field value")
    return Point(measurement, tuple(tags.items()), tuple(fields.values()), timestamp), end.end()


def _key(s: str, i: int, what: str) -> tuple[str, int]:
    m = _KEY.match(s, i)
    if m is None:
        raise _Bad(f"missing {what}")
    return _KEY_UNESCAPE.sub(r"\1", m.group()), m.end()


def _field_value(s: str, i: int, key: str) -> tuple[Field, int]:
    """The field value starting at s[i], and where it ends."""
    c = s[i] if i < len(s) else ""
    if c == '"':
        m = _STRING.match(s, i)
        if m is None:
            raise _Bad(f"unterminated string for field {key!r}")
        return Field(key, "string", _STRING_UNESCAPE.sub(r"\1", m.group(1))), m.end()
    m = _BOOL.match(s, i)
    if m is not None:
        return Field(key, "boolean", m.group() in _TRUE), m.end()
    m = _NUMBER.match(s, i)
    if m is None or (m.end() < len(s) and s[m.end()] not in ", \t\r\n"):
        raise _Bad(f"invalid field value for field {key!r}")
    end = m.end()
    text, suffix = m.group(), m.group(1)
    if suffix:
        digits = text[:-1]
        if not re.fullmatch(r"[-+]?\d+", digits):
            raise _Bad(f"invalid integer for field {key!r}")
        v = int(digits)
        if suffix == "i":
            if not _INT64_MIN <= v <= _INT64_MAX:
                raise _Bad(f"integer out of range for field {key!r}")
            return Field(key, "integer", v), end
        if digits.startswith("-") or v > _UINT64_MAX:
            raise _Bad(f"unsigned integer out of range for field {key!r}")
        return Field(key, "uinteger", v), end
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Bad(f"float out of range for field {key!r}")
    return Field(key, "float", value), end


# ---------------------------------------------------------------- encoding


def encode(points: Sequence[Point]) -> str:
    """Points as line protocol, one line each (for tests and examples)."""
    return "".join(encode_point(p) + "\n" for p in points)


def encode_point(p: Point) -> str:
    """One point as one line, escaped so that `parse` gives the same point back."""
    parts = [_escape(p.measurement, ", ")]
    parts.extend(f",{_escape(k, ',= ')}={_escape(v, ',= ')}" for k, v in p.tags)
    fields = ",".join(f"{_escape(f.key, ',= ')}={_value(f)}" for f in p.fields)
    line = "".join(parts) + " " + fields
    return line if p.timestamp is None else f"{line} {p.timestamp}"


def _escape(text: str, specials: str) -> str:
    out = text.replace("\\", "\\\\")
    for c in specials:
        out = out.replace(c, "\\" + c)
    return out


def _value(f: Field) -> str:
    v = f.value
    if f.type == "string":
        assert isinstance(v, str)
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if f.type == "boolean":
        return "true" if v else "false"
    if f.type == "integer":
        return f"{v}i"
    if f.type == "uinteger":
        return f"{v}u"
    return repr(float(v))
