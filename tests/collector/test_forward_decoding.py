"""collector.inputs.fluent (sans-IO forward decoding) and collector.inputs.mapping (mapping rules,
the inputs file), without sockets: every event mode, gzip caps, and any msgpack value decoding
to a message or a ForwardError only."""

from __future__ import annotations

import gzip

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.config import load_config
from collector.errors import ConfigError
from collector.inputs import fluent
from collector.inputs.lineprotocol import Field, Point
from collector.inputs.mapping import (
    ForwardMapping,
    InfluxMapping,
    KindRule,
    load_inputs,
    point_readings,
    record_readings,
)

S = 1_000_000_000
T = 1_764_000_000 * S
KINDS = ("gauge", "counter", "state", "text", "temperature")


def roundtrip(obj: object) -> object:
    u = fluent.unpacker()
    u.feed(msgpack.packb(obj, use_bin_type=True))
    return next(u)


def test_every_mode_and_entry_shape_decodes_to_the_same_events():
    rec: dict[object, object] = {"v": 1.5}
    entry = [fluent.event_time(T + 7), rec]
    packed = msgpack.packb(entry) + msgpack.packb([[fluent.event_time(T + 8), {"m": 1}], rec])
    msgs = [
        ["t", fluent.event_time(T + 7), rec, {"chunk": "a"}],
        ["t", [entry], {"chunk": "a"}],
        ["t", packed, {"chunk": "a"}],
        ["t", gzip.compress(packed[:11]) + gzip.compress(packed[11:]),
         {"chunk": "a", "compressed": "gzip"}],
    ]  # fmt: skip
    got = [fluent.decode_message(roundtrip(m)) for m in msgs]
    assert got[0] == got[1] == fluent.Message("t", (fluent.Event(T + 7, rec),), "a")
    assert got[2] == got[3]
    assert [e.ts_ns for e in got[2].events] == [T + 7, T + 8]


@pytest.mark.parametrize(
    ("time_value", "ns"),
    [(0, None), (1_764_000_000, T), (1_764_000_000.25, T + S // 4), (fluent.event_time(0), None)],
)
def test_times(time_value, ns):
    msg = fluent.decode_message(roundtrip(["t", time_value, {"v": 1}]))
    assert msg.events[0].ts_ns == ns


@pytest.mark.parametrize(
    "bad",
    [
        "not an array",
        ["t"],
        [1, 0, {}],
        ["t", 0],
        ["t", [], "not a map"],
        ["t", b"\x92\x01", {}],  # packed entries ending inside an entry
        ["t", b"x", {"compressed": "zstd"}],
        ["t", b"not gzip", {"compressed": "gzip"}],
        ["t", 0, {}, {"chunk": 5}],
    ],
)
def test_malformed_messages_raise_forward_error(bad):
    with pytest.raises(fluent.ForwardError):
        fluent.decode_message(roundtrip(bad))


def test_bad_entries_are_reported_not_fatal():
    msg = fluent.decode_message(roundtrip(["t", [[1, {"a": 1}], [1, "x"], [-1, {}], "e"]]))
    assert len(msg.events) == 1
    assert [i for i, _, _ in msg.invalid] == [1, 2, 3]


def test_gunzip_caps_the_output_of_every_member():
    one = gzip.compress(b"a" * 1000)
    assert fluent.gunzip(one + one, 2000) == b"a" * 2000
    for data in (one + one, gzip.compress(b"\0" * 10_000_000)):
        with pytest.raises(fluent.ForwardError, match="expands past"):
            fluent.gunzip(data, 1999)
    with pytest.raises(fluent.ForwardError, match="truncated"):
        fluent.gunzip(one[:-8], 5000)


def test_handshake_digests_follow_the_spec():
    # sha512_hex(salt + hostname + nonce + key), bytes concatenated
    import hashlib

    want = hashlib.sha512(b"salt" + b"host" + b"nonce" + b"key").hexdigest()
    assert fluent.digest(b"salt", "host", b"nonce", "key") == want
    ping = fluent.parse_ping(roundtrip(["PING", "host", b"salt", want, "", ""]))
    assert ping.shared_key_salt == b"salt" and ping.username == ""
    with pytest.raises(fluent.ForwardError):
        fluent.parse_ping(roundtrip(["PING", "host", b"salt", want]))
    # fluent-logger for Node.js sends nil for a username it was not given
    ping = fluent.parse_ping(roundtrip(["PING", "host", b"salt", want, None, "d"]))
    assert (ping.username, ping.password_digest) == ("", "d")


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


@given(msgpack_values)
def test_any_msgpack_value_is_a_message_or_a_forward_error(obj):
    try:
        msg = fluent.decode_message(roundtrip(obj))
    except fluent.ForwardError:
        return
    assert isinstance(msg.tag, str)
    assert all(isinstance(e.record, dict) for e in msg.events)


# ---------------------------------------------------------------- mapping


def test_influx_fields_map_by_rule_then_by_type():
    m = InfluxMapping((KindRule("*", "text", None, "boolean"), KindRule("mem/*", "gauge", "B")))
    p = Point(
        "mem",
        (("host", "a"),),
        (Field("used", "integer", 5), Field("ok", "boolean", True)),
    )
    q = Point("disk", (), (Field("n", "integer", -2), Field("u", "uinteger", 3)))
    assert point_readings(m, p, T) == [
        ["mem/used", "gauge", T, 5, "B", {"host": "a"}],
        ["mem/ok", "text", T, True, None, {"host": "a"}],
    ]
    assert point_readings(m, q, T) == [
        ["disk/n", "gauge", T, -2, None, None],
        ["disk/u", "counter", T, 3, None, None],
    ]


def test_records_map_numbers_and_report_the_rest():
    m = ForwardMapping(tag_keys=("host",), ignore_keys=("log",))
    readings, bad = record_readings(
        m, "gh", {"t": 1.5, "n": 2, "on": False, "host": "x", "log": "l", "s": "str", 3: 1}, T
    )
    assert readings == [
        ["gh/t", "gauge", T, 1.5, None, {"host": "x"}],
        ["gh/n", "counter", T, 2, None, {"host": "x"}],
        ["gh/on", "state", T, False, None, {"host": "x"}],
    ]
    assert [(b.key, b.code) for b in bad] == [("s", "wrong_type"), ("3", "invalid")]


def test_the_inputs_file_is_checked(tmp_path):
    path = tmp_path / "inputs.toml"
    path.write_text(
        '[influx]\n[[influx.kinds]]\nsensor = "cpu/*"\nkind = "gauge"\nunit = "%"\n'
        '[forward]\nauth = "record"\ntag_keys = ["host"]\n'
    )
    cfg = load_inputs(str(path), KINDS)
    assert cfg.influx.rules == (KindRule("cpu/*", "gauge", "%"),)
    assert (cfg.forward.auth, cfg.forward.token_key, cfg.forward.tag_keys) == (
        "record",
        "_token",
        ("host",),
    )
    for text, what in [
        ("[influx]\nnope = 1\n", "unknown entry 'influx.nope'"),
        ('[[influx.kinds]]\nsensor = "a"\nkind = "nokind"\n', "unknown kind"),
        ('[[influx.kinds]]\nsensor = "a"\nkind = "gauge"\ntype = "int"\n', "'type'"),
        ('[forward]\nauth = "none"\n', "forward.auth"),
        ('[forward]\ntag_keys = "host"\n', "tag_keys"),
        ("not toml", "not valid TOML"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=what):
            load_inputs(str(path), KINDS)


def test_forward_listen_is_off_by_default_and_checked():
    assert load_config(env={}).forward_addr is None
    cfg = load_config(env={"TELEMETRY_FORWARD_LISTEN": "127.0.0.1:24224"})
    assert cfg.forward_addr == ("127.0.0.1", 24224)
    with pytest.raises(ConfigError, match="forward_listen"):
        load_config(env={"TELEMETRY_FORWARD_LISTEN": "nowhere"})
    with pytest.raises(ConfigError, match="inputs"):
        load_config(env={"TELEMETRY_INPUTS": "/no/such/file.toml"})
