"""Limits that protect the daemon: connections per source address, per-device rate limit,
and the configurable protocol limits (frame size, bad-frame budget, handshake deadline).

The real collector subprocess, raw wire clients and a real agent over 127.0.0.1; each limit
is set through a different channel (config file, environment, flags) so all three reach the
daemon. Loopback answers on all of 127.0.0.0/8, so a client bound to 127.0.0.2 is "another
address".
"""

from __future__ import annotations

import re
import struct
import time
import urllib.request
from pathlib import Path

from schemas import errors, wire
from tests.collector.wireclient import CollectorProcess, WireClient
from tests.reliability.harness import (
    ENV,
    Agent,
    add_devices,
    assert_exactly_once,
    counter_input,
    report,
    stored,
    wait_for,
)
from tests.reliability.test_security import rows

RATE = 100  # readings/s per device in the rate-limit test (bucket: 2 s worth)


def batch(n: int, seq: int) -> list[object]:
    ts = 1_750_000_000_000_000_000 + seq * 1_000_000
    return [[f"lim/s{i % 3}", "gauge", ts + i, float(i), None, None] for i in range(n)]


def metric(d: CollectorProcess, name: str) -> float:
    assert d.http is not None
    with urllib.request.urlopen(f"http://{d.http[0]}:{d.http[1]}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_connections_per_source_address_are_limited(tmp_path: Path) -> None:
    db = tmp_path / "lim.db"
    tokens = add_devices(db, ["a"])
    conf = tmp_path / "collector.toml"
    conf.write_text("[limits]\nmax_connections_per_ip = 2\n")
    with CollectorProcess(db, "--config", str(conf), env=ENV) as d:
        first, second = WireClient(*d.ingest), WireClient(*d.ingest)
        # Two streams of one device: two live sessions (one stream's would replace).
        for i, c in enumerate((first, second)):
            assert isinstance(c.hello("a", tokens["a"], stream=f"st-{i}"), wire.Welcome)
        with WireClient(*d.ingest) as third:
            ev = third.recv()
            assert isinstance(ev, wire.Error) and ev.code == errors.SERVER_BUSY and ev.fatal
            assert "from this address" in ev.message
            assert third.closed_by_peer()
        # Another source address is not affected.
        with WireClient(*d.ingest, source_address=("127.0.0.2", 0)) as other:
            assert isinstance(other.hello("a", tokens["a"]), wire.Welcome)
        # A slot freed by a closed connection is given again.
        first.close()

        def served() -> bool:
            with WireClient(*d.ingest) as c:
                return isinstance(c.hello("a", tokens["a"]), wire.Welcome)

        wait_for(served, "a freed per-address slot", within=10)
        second.close()
        assert "reason=max_connections_per_ip" in d.log
    report("limit per address", {"limit": 2, "refused": 1})


def test_rate_limit_answers_retry_in_order_and_stores_nothing(tmp_path: Path) -> None:
    db = tmp_path / "rate.db"
    tokens = add_devices(db, ["a", "b"])
    env = {**ENV, "TELEMETRY_MAX_READINGS_PER_S_PER_DEVICE": str(RATE)}
    with CollectorProcess(db, env=env) as d:
        a = WireClient(*d.ingest)
        assert isinstance(a.hello("a", tokens["a"]), wire.Welcome)
        ack = a.batch(1, batch(150, 1))  # the bucket holds 2 s worth: 200
        assert isinstance(ack, wire.Ack) and ack.accepted == 150
        t0 = time.monotonic()
        retry = a.batch(2, batch(150, 2))  # 50 left: needs 100 more, ~1 s
        assert isinstance(retry, wire.Retry) and retry.seq == 2 and retry.reason == "rate_limited"
        assert 1000 - 1000 * (time.monotonic() - t0) - 50 <= retry.retry_after_ms <= 1000
        # Pipelined: 3 must not be committed while 2 waits (2's resend would look like a
        # duplicate), so both are answered RETRY, in order.
        a.send(wire.Batch(2, batch(150, 2)))
        a.send(wire.Batch(3, batch(1, 3)))
        answers = [a.recv(), a.recv()]
        assert [(type(x).__name__, getattr(x, "seq", None)) for x in answers] == [
            ("Retry", 2),
            ("Retry", 3),
        ]
        assert stored(db, "a").total == 150
        # Another device has its own bucket.
        with WireClient(*d.ingest) as b:
            assert isinstance(b.hello("b", tokens["b"]), wire.Welcome)
            ack = b.batch(1, batch(150, 1))
            assert isinstance(ack, wire.Ack) and ack.accepted == 150
        # Doing what RETRY says gets both batches stored, each once.
        retries = 3
        for seq, n in ((2, 150), (3, 1)):
            ans = a.batch(seq, batch(n, seq))
            while isinstance(ans, wire.Retry):
                retries += 1
                time.sleep(ans.retry_after_ms / 1000)  # the protocol's wait, not a sync
                ans = a.batch(seq, batch(n, seq))
            assert isinstance(ans, wire.Ack) and ans.accepted == n, ans
        a.close()
        waited = time.monotonic() - t0
        assert metric(d, "telemetry_retries_total") == retries
        assert "rate limiting device=a" in d.log
    assert stored(db, "a").total == 301 and stored(db, "b").total == 150
    # 301 readings from an empty 200 bucket at 100/s: at least ~1 s of waiting.
    assert waited >= 0.9
    report("rate limit raw", {"limit_per_s": RATE, "retries": retries, "seconds": waited})


def test_agent_under_rate_limit_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "agent-rate.db"
    tokens = add_devices(db, ["dev"])
    n, sensors = 300, ["r/a", "r/b"]
    with CollectorProcess(db, "--max-readings-per-s-per-device", "150", env=ENV) as d:
        agent = Agent(tmp_path, "dev", tokens["dev"])
        agent.configure(d.ingest[1], counter_input(sensors, n, interval="2ms"), batch=200)
        agent.start()
        try:
            took = wait_for(
                lambda: stored(db, "dev").total >= n * len(sensors), "rate-limited agent", 30
            )
            retries = metric(d, "telemetry_retries_total")
        finally:
            agent.stop()
    assert_exactly_once(stored(db, "dev"), {("dev", s): n for s in sensors})
    assert retries > 0  # the limit did hold it back
    report("rate limit agent", {"readings": n * len(sensors), "retries": retries, "s": took})


def test_protocol_limits_are_configurable(tmp_path: Path) -> None:
    db = tmp_path / "proto.db"
    tokens = add_devices(db, ["a"])
    flags = ["--max-frame-bytes", "8192", "--bad-frame-budget", "2", "--handshake-timeout-s", "0.3"]
    garbage = struct.pack(">I", 3) + b"\xc1\xc1\xc1"
    with CollectorProcess(db, *flags, env=ENV) as d:
        with WireClient(*d.ingest) as c:
            welcome = c.hello("a", tokens["a"])
            assert isinstance(welcome, wire.Welcome) and welcome.max_frame_bytes == 8192
            c.send_raw(struct.pack(">I", 8193))  # just over: refused on the header alone
            ev = c.recv()
            assert isinstance(ev, wire.Error) and ev.code == errors.FRAME_TOO_LARGE and ev.fatal
            assert c.closed_by_peer()
        with WireClient(*d.ingest) as c:
            assert isinstance(c.hello("a", tokens["a"]), wire.Welcome)
            codes = []
            for _ in range(3):
                c.send_raw(garbage)
                ev = c.recv()
                assert isinstance(ev, wire.Error)
                codes.append((ev.code, ev.fatal))
            assert codes == [
                (errors.MALFORMED_FRAME, False),
                (errors.MALFORMED_FRAME, False),
                (errors.TOO_MANY_BAD_FRAMES, True),
            ]
            assert c.closed_by_peer()
        with WireClient(*d.ingest) as silent:
            t0 = time.monotonic()
            ev = silent.recv(timeout=10)
            waited = time.monotonic() - t0
            assert isinstance(ev, wire.Error) and ev.code == errors.HANDSHAKE_TIMEOUT
            assert 0.25 <= waited < 5
    assert rows(db)["a"] == (0, 0, 0)
