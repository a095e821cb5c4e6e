"""`telemetry collector --proxy-protocol` as a subprocess: the PROXY header (v1, v2) names the
client that logs and per-address limits use; no header, a bad one, or one from an untrusted
address closes the connection with a log line. Real TCP and a real SQLite file."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.config import load_config
from collector.errors import ConfigError
from collector.ingest.proxyheader import build_v1, build_v2
from schemas import errors, wire
from tests.collector.wireclient import CollectorProcess, WireClient

TS0 = 1_700_000_000_000_000_000
DST = ("127.0.0.1", 7878)


def reading(i: int) -> list[object]:
    return ["s/1", "counter", TS0 + i, i, None, None]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[CollectorProcess]:
    with CollectorProcess(
        tmp_path / "t.db", "--proxy-protocol", "--max-connections-per-ip", "1"
    ) as d:
        yield d


def wait_log(d: CollectorProcess, text: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while text not in d.log:
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line with {text!r}:\n{d.log[-2000:]}")
        time.sleep(0.02)


def test_v2_and_v1_headers_name_the_client(daemon: CollectorProcess) -> None:
    token = daemon.add_device("far-away")
    with WireClient(*daemon.ingest) as c:
        c.send_raw(build_v2(("203.0.113.7", 40001), DST))
        assert isinstance(c.hello("far-away", token, stream="a"), wire.Welcome)
        ack = c.batch(1, [reading(1)])
        assert isinstance(ack, wire.Ack) and ack.accepted == 1
    wait_log(daemon, "connected device=far-away stream=a peer=203.0.113.7:40001")
    wait_log(daemon, "disconnected device=far-away peer=203.0.113.7:40001")
    with WireClient(*daemon.ingest) as c:
        # The header and HELLO in one segment: the bytes after the header are the wire's.
        hello = c.proto.send(wire.Hello(device_id="far-away", token=token, stream="b"))
        c.send_raw(build_v1(("2001:db8::9", 50002), ("::1", 7878)) + hello)
        assert isinstance(c.recv(), wire.Welcome)
    wait_log(daemon, "connected device=far-away stream=b peer=2001:db8::9:50002")
    assert "peer=127.0.0.1:" not in daemon.log.split("PROXY protocol header required")[1]


def test_no_header_or_garbage_is_refused_and_logged(daemon: CollectorProcess) -> None:
    token = daemon.add_device("direct")
    with WireClient(*daemon.ingest) as c:
        c.send(wire.Hello(device_id="direct", token=token))
        assert c.closed_by_peer()
    wait_log(daemon, "reason=PROXY header: no PROXY protocol header")
    with WireClient(*daemon.ingest) as c:
        c.send_raw(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n")
        assert c.closed_by_peer()
    wait_log(daemon, "reason=PROXY header: PROXY v1: port 99999 out of range")
    with WireClient(*daemon.ingest) as c:
        c.send_raw(b"PROXY TCP4 1.2.3.4")
    wait_log(daemon, "reason=PROXY header: closed mid-header")
    # A probe that sends nothing (a TCP health check) is not a warning.
    WireClient(*daemon.ingest).close()
    with WireClient(*daemon.ingest) as c:
        c.send(wire.Hello(device_id="direct", token=token))
        assert c.closed_by_peer()
    deadline = time.monotonic() + 10
    while daemon.log.count("reason=PROXY header") < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    # Four refusals logged as warnings; the silent probe is not one of them.
    assert daemon.log.count("reason=PROXY header") == 4, daemon.log


def test_per_address_limit_counts_the_named_client(daemon: CollectorProcess) -> None:
    token = daemon.add_device("site")
    with WireClient(*daemon.ingest) as first:
        first.send_raw(build_v2(("198.51.100.1", 1000), DST))
        assert isinstance(first.hello("site", token, stream="one"), wire.Welcome)
        with WireClient(*daemon.ingest) as same_site:
            same_site.send_raw(build_v2(("198.51.100.1", 1001), DST))
            busy = same_site.recv()
            assert isinstance(busy, wire.Error) and busy.code == errors.SERVER_BUSY
        # Same balancer socket address, another client: admitted.
        with WireClient(*daemon.ingest) as other_site:
            other_site.send_raw(build_v2(("198.51.100.2", 1000), DST))
            assert isinstance(other_site.hello("site", token, stream="two"), wire.Welcome)
    wait_log(daemon, "connection refused peer=198.51.100.1:1001 reason=max_connections_per_ip")


def test_header_from_an_untrusted_address_is_refused(tmp_path: Path) -> None:
    args = ("--proxy-protocol", "--proxy-protocol-from", "10.0.0.0/8, 192.168.0.0/16")
    with CollectorProcess(tmp_path / "t.db", *args) as d:
        with WireClient(*d.ingest) as c:
            c.send_raw(build_v2(("203.0.113.7", 40001), DST))
            assert c.closed_by_peer()
        wait_log(d, "reason=PROXY header: untrusted address")
        assert "PROXY protocol header required on ingest from=10.0.0.0/8,192.168.0.0/16" in d.log


def test_config_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('proxy_protocol = true\nproxy_protocol_from = ["10.1.0.0/16", "::1"]\n')
    c = load_config(str(cfg), env={})
    assert c.proxy_protocol and [str(n) for n in c.proxy_networks] == ["10.1.0.0/16", "::1/128"]
    assert not load_config(None, env={}).proxy_protocol
    assert [str(n) for n in load_config(None, env={}).proxy_networks] == [
        "127.0.0.1/32",
        "::1/128",
    ]
    env = {"TELEMETRY_PROXY_PROTOCOL": "1", "TELEMETRY_PROXY_PROTOCOL_FROM": "10.0.0.1"}
    assert load_config(None, env=env).proxy_protocol_from == ("10.0.0.1",)
    with pytest.raises(ConfigError, match="proxy_protocol_from"):
        load_config(None, env={"TELEMETRY_PROXY_PROTOCOL_FROM": "not-a-net"})
    cfg.write_text("proxy_protocol_from = 3\n")
    with pytest.raises(ConfigError, match="list of strings"):
        load_config(str(cfg), env={})
    with pytest.raises(ConfigError, match="not supported together with TLS"):
        load_config(
            None,
            env={},
            overrides={"proxy_protocol": True, "tls_cert": "c.pem", "tls_key": "k.pem"},
        )
