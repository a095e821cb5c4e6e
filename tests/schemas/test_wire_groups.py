"""schemas.wire's series groups (v1.2): grouping, expansion and the GBATCH codec."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from schemas import wire
from schemas.errors import RemoteProtocolError

HEADS = st.tuples(
    st.sampled_from(["a", "b", "c/d"]),
    st.sampled_from(["temperature", "gauge", "gps"]),
    st.sampled_from([None, "C", 1, True]),
    st.sampled_from([None, {}, {"k": "v"}, {"k": "v", "j": "w"}, {"j": "w", "k": "v"}]),
)
READINGS = st.lists(
    st.one_of(
        st.builds(
            lambda h, ts, v: [h[0], h[1], ts, v, h[2], h[3]],
            HEADS,
            st.integers(0, 2**63 - 1),
            st.one_of(st.floats(allow_nan=False), st.integers(-5, 5), st.booleans()),
        ),
        st.sampled_from([[1, 2, 3], "x", None]),
    ),
    max_size=40,
)


@given(READINGS, st.integers(1, 4))
def test_grouped_batch_round_trips_to_the_readings_in_grouped_order(
    readings: list[object], min_group: int
) -> None:
    g = wire.group_readings(readings, min_group=min_group)
    assert sorted(g.order) == list(range(len(readings)))
    event = wire.Batch(7, g.rows, g.groups)
    decoded = wire.decode_body(wire.encode_body(event))
    assert isinstance(decoded, wire.Batch)
    assert decoded.size == len(readings)
    expanded = wire.expand_groups(decoded.readings, decoded.groups)
    assert expanded == [readings[i] for i in g.order]
    # Same msgpack bytes reading for reading: nothing is coerced on the way (1 vs True).
    packed = [wire.encode_body(wire.Batch(1, [r])) for r in expanded]
    assert packed == [wire.encode_body(wire.Batch(1, [readings[i]])) for i in g.order]
    # Each series keeps its readings' order.
    start = len(decoded.readings)
    for group in decoded.groups:
        assert isinstance(group, list) and len(group[4]) >= min_group
        idx = g.order[start : start + len(group[4])]
        assert idx == sorted(idx)
        start += len(group[4])


def test_min_group_leaves_singletons_as_rows_and_keeps_their_order() -> None:
    rs = [
        ["a", "gauge", 1, 1.0, None, None],
        ["b", "gauge", 1, 1.0, None, None],
        ["a", "gauge", 2, 2.0, None, None],
    ]
    g = wire.group_readings(rs)
    assert g.rows == [rs[1]] and g.order == [1, 0, 2]
    assert g.groups == [["a", "gauge", None, None, [1, 2], [1.0, 2.0]]]


def test_a_series_longer_than_a_group_is_split() -> None:
    n = wire.MAX_GROUP_READINGS + 3
    rs = [["a", "gauge", i, 1, None, None] for i in range(n)]
    g = wire.group_readings(rs)
    assert [len(x[4]) for x in g.groups] == [wire.MAX_GROUP_READINGS, 3]  # type: ignore[arg-type]
    assert g.order == list(range(n))


def test_reading_group_builds_the_wire_group() -> None:
    group = wire.ReadingGroup("pos", "gps", [5], [{"lat": 1.0, "lon": 2.0}], tags={"k": "v"})
    assert group.to_wire() == ["pos", "gps", None, {"k": "v"}, [5], [{"lat": 1.0, "lon": 2.0}]]
    assert wire.Batch(1, [["x"]], [group]).size == 2
    assert wire.expand_groups([], [group]) == [
        ["pos", "gps", 5, {"lat": 1.0, "lon": 2.0}, None, {"k": "v"}]
    ]


def test_gbatch_error_names_its_seq_and_batch_codes_stay_distinct() -> None:
    body = wire.encode_body(wire.Batch(12, [], [["s", "gauge", None, None, [1, 2], [1.0]]]))
    assert body[1] == wire.MessageType.GBATCH
    assert int(wire.MessageType.GBATCH) == 10
    try:
        wire.decode_body(body)
    except RemoteProtocolError as exc:
        assert (exc.code, exc.fatal, exc.seq) == ("bad_message", False, 12)
    else:
        raise AssertionError("a group with columns of different lengths decoded")
    assert wire.encode_body(wire.Batch(3, [["s"]]))[1] == wire.MessageType.BATCH


GBATCH_BODY = wire.encode_body(
    wire.Batch(
        3,
        [["door", "state", 1, True, None, None]],
        [
            ["air", "temperature", "C", {"k": "v"}, [1, 2, 3], [20.0, 21.0, 22.0]],
            ["pos", "gps", None, None, [4], [{"lat": 1.0, "lon": 2.0}]],
        ],
    )
)


@given(st.data())
def test_mutated_gbatch_bodies_decode_or_raise_remote_protocol_error_only(
    data: st.DataObject,
) -> None:
    body = bytearray(GBATCH_BODY)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(body)))
    try:
        event = wire.decode_body(bytes(body[:cut]))
    except RemoteProtocolError as exc:
        assert not exc.fatal
        return
    if isinstance(event, wire.Batch) and event.groups:
        assert event.size <= wire.MAX_BATCH_READINGS
        assert len(wire.expand_groups(event.readings, event.groups)) == event.size
