"""collector.inputs.lineprotocol: the InfluxDB line-protocol parser and encoder (pure).

Cases from the InfluxDB reference (escapes, field types, comments, errors by line number),
then Hypothesis: any points encode and parse back unchanged, any text parses without
raising, and a bad line costs only itself.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.inputs.lineprotocol import Field, LineError, ParsedLine, Point, encode, parse


def points(body: str) -> list[Point]:
    out = []
    for item in parse(body):
        assert isinstance(item, ParsedLine), item
        out.append(item.point)
    return out


def errors(body: str) -> list[tuple[int, str]]:
    return [(e.line, e.message) for e in parse(body) if isinstance(e, LineError)]


def test_a_telegraf_cpu_line():
    (p,) = points(
        "cpu,cpu=cpu-total,host=web-1 usage_idle=97.5,usage_user=1.25 1700000000000000000\n"
    )
    assert p == Point(
        "cpu",
        (("cpu", "cpu-total"), ("host", "web-1")),
        (Field("usage_idle", "float", 97.5), Field("usage_user", "float", 1.25)),
        1700000000000000000,
    )


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("1", Field("f", "float", 1.0)),
        ("-1.5e3", Field("f", "float", -1500.0)),
        (".5", Field("f", "float", 0.5)),
        ("12i", Field("f", "integer", 12)),
        ("-9223372036854775808i", Field("f", "integer", -(2**63))),
        ("18446744073709551615u", Field("f", "uinteger", 2**64 - 1)),
        ("t", Field("f", "boolean", True)),
        ("TRUE", Field("f", "boolean", True)),
        ("False", Field("f", "boolean", False)),
        ('"a \\"quoted\\" \\\\ path\\n"', Field("f", "string", 'a "quoted" \\ path\\n')),
        ('"two\nlines"', Field("f", "string", "two\nlines")),
    ],
)
def test_field_types(text, field):
    (p,) = points(f"m f={text}")
    assert p.fields == (field,)


def test_escapes_in_names_and_tags():
    (p,) = points(r"my\ cpu\,x,tag\ key=a\=b\,c\ d,k=v\\ field\=key=1i")
    assert p.measurement == "my cpu,x"
    assert p.tags == (("tag key", "a=b,c d"), ("k", "v\\"))
    assert p.fields == (Field("field=key", "integer", 1),)
    # A backslash before an ordinary character is a literal backslash.
    (q,) = points(r"dir\path,t=c:\temp f=1")
    assert q.measurement == "dir\\path" and q.tags == (("t", "c:\\temp"),)


def test_comments_blank_lines_crlf_and_repeated_fields():
    body = "# comment\n\n  \r\nm f=1,f=2 5\r\n   # indented comment\nm g=3\n"
    items = list(parse(body))
    assert [i.line for i in items] == [4, 6]
    assert [i.point for i in items if isinstance(i, ParsedLine)] == [
        Point("m", (), (Field("f", "float", 2.0),), 5),
        Point("m", (), (Field("g", "float", 3.0),), None),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("m", "missing fields"),
        ("m ", "missing field key"),
        ("m f", "missing field value for field key 'f'"),
        ("m f=", "invalid field value for field 'f'"),
        ("m,t f=1", "missing tag value for tag key 't'"),
        ("m,t= f=1", "missing tag value"),
        ("m,t=1,t=2 f=1", "duplicate tag key 't'"),
        ("m f=nan", "invalid field value for field 'f'"),
        ("m f=inf", "invalid field value for field 'f'"),
        ("m f=1e999", "float out of range for field 'f'"),
        ("m f=1.5i", "invalid integer for field 'f'"),
        ("m f=9223372036854775808i", "integer out of range for field 'f'"),
        ("m f=-1u", "unsigned integer out of range for field 'f'"),
        ('m f="open', "unterminated string for field 'f'"),
        ("m f=1 12x", "invalid timestamp"),
        ("m f=1 x", "invalid timestamp"),
        ("m f=tru", "invalid field value for field 'f'"),
        ("m f=1x", "invalid field value for field 'f'"),
    ],
)
def test_bad_lines_name_their_reason(line, message):
    ((n, got),) = errors(line)
    assert n == 1
    assert got.startswith(message), got


def test_a_bad_line_costs_only_itself_and_line_numbers_count_physical_lines():
    body = 'a f=1\nb f="x\ny" 2\nbroken\n\nc f=3 3\nd f=\n'
    items = list(parse(body))
    assert [(type(i).__name__, i.line) for i in items] == [
        ("ParsedLine", 1),
        ("ParsedLine", 2),
        ("LineError", 4),
        ("ParsedLine", 6),
        ("LineError", 7),
    ]
    bad = items[2]
    assert isinstance(bad, LineError) and bad.text == "broken"


def test_invalid_utf8_costs_its_line():
    body = b"a f=1\nb\xff f=2\nc f=3\n".decode("utf-8", "surrogateescape")
    items = list(parse(body))
    assert [type(i).__name__ for i in items] == ["ParsedLine", "LineError", "ParsedLine"]
    assert isinstance(items[1], LineError) and items[1].message == "invalid UTF-8"


# ---------------------------------------------------------------- hypothesis

_name_chars = st.characters(blacklist_categories=("Cs", "Cc"))
names = st.text(_name_chars, min_size=1, max_size=12)
measurements = names.filter(lambda s: not s.startswith("#"))
values = st.one_of(
    st.builds(lambda v: ("float", v), st.floats(allow_nan=False, allow_infinity=False)),
    st.builds(lambda v: ("integer", v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: ("uinteger", v), st.integers(0, 2**64 - 1)),
    st.builds(lambda v: ("boolean", v), st.booleans()),
    st.builds(lambda v: ("string", v), st.text()),  # any text, newlines and quotes too
)


@st.composite
def point_strategy(draw: st.DrawFn) -> Point:
    tags = draw(st.dictionaries(names, names, max_size=4))
    fields = draw(st.dictionaries(names, values, min_size=1, max_size=4))
    ts = draw(st.none() | st.integers(-(2**63), 2**63 - 1))
    return Point(
        draw(measurements),
        tuple(tags.items()),
        tuple(Field(k, t, v) for k, (t, v) in fields.items()),  # type: ignore[arg-type]  # t is a FieldType literal
        ts,
    )


@given(st.lists(point_strategy(), min_size=1, max_size=5))
def test_encode_then_parse_gives_the_same_points(ps):
    got = points(encode(ps))
    assert len(got) == len(ps)
    for a, b in zip(got, ps, strict=True):
        assert (a.measurement, a.tags, a.timestamp) == (b.measurement, b.tags, b.timestamp)
        for fa, fb in zip(a.fields, b.fields, strict=True):
            assert (fa.key, fa.type) == (fb.key, fb.type)
            assert fa.value == fb.value


@given(st.text(max_size=300))
def test_any_text_parses_into_points_and_errors_without_raising(text):
    items = list(parse(text))
    lines = [i.line for i in items]
    assert lines == sorted(lines) and len(set(lines)) == len(lines)
    assert all(1 <= n <= text.count("\n") + 1 for n in lines)


@given(st.lists(point_strategy(), min_size=1, max_size=4), st.integers(0, 4))
def test_a_garbage_line_between_good_ones_costs_only_itself(ps, at):
    at = min(at, len(ps))
    # A string field may span lines: insert at a point boundary, counted in points.
    chunks = [encode([p]) for p in ps]
    body = "".join(chunks[:at]) + "garbage\n" + "".join(chunks[at:])
    got = list(parse(body))
    assert sum(isinstance(i, LineError) for i in got) == 1
    assert [i.point for i in got if isinstance(i, ParsedLine)] == points(encode(ps))
