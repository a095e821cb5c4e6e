"""collector.ingest.prepare: validated batches become storage rows and dead-letter entries."""

from __future__ import annotations

import json

import msgpack

from collector.ingest.prepare import Ingest, canonical_tags

RECV = 10_000_000_000


def test_scalar_rows_keys_and_lag():
    ing = Ingest.from_kinds()
    b = ing.prepare(
        7,
        [
            ["air", "temperature", 9_000_000_000, 21.5, None, None],
            ["air", "temperature", 9_500_000_000, 70, "F", {"room": "b", "floor": "1"}],
            ["door", "state", 9_000_000_000, True, None, None],
            ["pkts", "counter", 9_000_000_000, 12, "pkt", None],
        ],
        RECV,
    )
    assert b.seq == 7 and b.valid_count == 4 and b.rejects == ()
    assert b.keys == [
        ("air", "", "temperature", "C", "{}"),
        ("air", "", "temperature", "F", '{"floor":"1","room":"b"}'),
        ("door", "", "state", "", "{}"),
        ("pkts", "", "counter", "pkt", "{}"),
    ]
    assert b.ts == [9_000_000_000, 9_500_000_000, 9_000_000_000, 9_000_000_000]
    assert b.values == [21.5, 70.0, True, 12]
    assert b.scalar_rows == 4 and b.composite_sizes == []


def test_composite_value_expands_to_one_row_per_field_after_scalars():
    ing = Ingest.from_kinds()
    b = ing.prepare(
        1,
        [
            ["pos", "gps", 5, {"lon": 2.5, "lat": 1.5, "alt": 10.0}, None, None],
            ["t", "temperature", 6, 1.0, "C", None],
        ],
        RECV,
    )
    assert b.valid_count == 2 and b.row_count == 4
    assert b.scalar_rows == 1 and b.composite_sizes == [3]
    assert b.keys[0] == ("t", "", "temperature", "C", "{}")
    assert [k[1] for k in b.keys[1:]] == ["alt", "lat", "lon"]
    assert b.values[1:] == [10.0, 1.5, 2.5]
    assert b.ts == [6, 5, 5, 5]


def test_rejects_keep_index_and_the_reading_as_received():
    ing = Ingest.from_kinds()
    bad = ["h", "humidity", 1, 150.0, None, None]
    b = ing.prepare(
        3,
        [
            ["ok", "temperature", 1, 1.0, None, None],
            bad,
            ["x", "no_such_kind", 1, 1, None, None],
            "not a reading",
            ["n", "gauge", 1, float("nan"), None, None],
        ],
        RECV,
    )
    assert b.valid_count == 1 and b.row_count == 1
    assert [(r.index, r.code) for r in b.rejects] == [
        (1, "out_of_range"),
        (2, "unknown_kind"),
        (3, "not_a_reading"),
        (4, "not_finite"),
    ]
    assert b.rejects[0].path == "value"
    dl = {d.index: d for d in b.dead_letters}
    assert msgpack.unpackb(dl[1].raw) == bad
    assert json.loads(dl[1].reading) == bad
    assert json.loads(dl[3].reading) == "not a reading"
    assert json.loads(dl[4].reading)[3] == "nan"  # strict JSON, the value kept readable
    assert dl[2].code == "unknown_kind"


def test_canonical_tags():
    assert canonical_tags(None) == "{}"
    assert canonical_tags({}) == "{}"
    assert canonical_tags({"b": "1", "a": "é"}) == '{"a":"é","b":"1"}'
