"""The Fluent forward input of the real collector (subprocess, real sockets, real SQLite).

Hand-built frames for every event mode, both entry shapes and both time encodings, the
shared-key handshake (good and bad), acks only after commit, resends stored once, gzip
bombs, oversized messages and timeouts; `fluent-logger` (Message mode, per-record tokens)
as the real third-party sender; TLS with certificates from `telemetry certs`.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner

from collector.cli import cli
from collector.inputs import fluent
from collector.inputs.auth import forward_key_of_token
from tests.collector.inputs_support import InputsCollector, Row, dead_letters, stored_rows

S = 1_000_000_000
T0 = 1_764_000_000 * S
INPUTS = """
[forward]
tag_keys = ["host"]
ignore_keys = ["log"]

[[forward.kinds]]
sensor = "greenhouse/temp"
kind = "temperature"
unit = "C"
"""
LIMITS = {"handshake_timeout_s": 2.0, "idle_timeout_s": 3.0, "heartbeat_ms": 1000}


class ForwardClient:
    """A blocking forward-protocol client that sends hand-built messages."""

    def __init__(self, addr: tuple[str, int], ctx: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(addr, timeout=10)
        self.sock = ctx.wrap_socket(sock, server_hostname=addr[0]) if ctx else sock
        self.unpacker = msgpack.Unpacker(raw=False)

    def __enter__(self) -> ForwardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, obj: object) -> None:
        self.sock.sendall(msgpack.packb(obj, use_bin_type=True))

    def recv(self, timeout: float = 10.0) -> Any:
        """The next msgpack value from the collector; None when it closed the connection."""
        deadline = time.monotonic() + timeout
        while True:
            for obj in self.unpacker:
                return obj
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("nothing from the collector in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            if not data:
                return None
            self.unpacker.feed(data)

    def handshake(
        self, hostname: str, key: str, username: str = "", password: str = ""
    ) -> list[Any]:
        """HELO -> PING -> PONG; returns the PONG (checking the server's digest when ok)."""
        helo = self.recv()
        assert helo[0] == "HELO", helo
        nonce, auth = helo[1]["nonce"], helo[1]["auth"]
        salt = os.urandom(16)
        self.send(
            [
                "PING",
                hostname,
                salt,
                fluent.digest(salt, hostname, nonce, key),
                username,
                fluent.digest(auth, username, password) if username else "",
            ]
        )
        pong = self.recv()
        if pong is not None and pong[1]:
            assert pong[4] == fluent.digest(salt, pong[3], nonce, key)
        return pong  # type: ignore[no-any-return]  # msgpack value

    def closed(self, timeout: float = 10.0) -> bool:
        try:
            return self.recv(timeout) is None
        except TimeoutError:
            return False


def et(ns: int) -> msgpack.ExtType:
    return fluent.event_time(ns)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InputsCollector]:
    tmp = tmp_path_factory.mktemp("forward")
    with InputsCollector(tmp, forward=True, inputs_toml=INPUTS, limits=LIMITS) as d:
        yield d


def connect(d: InputsCollector, device: str, token: str) -> ForwardClient:
    c = ForwardClient(d.forward)
    pong = c.handshake(device, forward_key_of_token(token))
    assert pong[:3] == ["PONG", True, ""], pong
    return c


def test_every_mode_is_acked_after_commit_and_a_resend_stores_nothing_twice(daemon):
    token = daemon.add_device("greenhouse-1")
    rec = {"temp": 21.5, "humidity": 40, "door": True, "host": "gh-a", "log": "hello"}
    e1 = msgpack.packb([et(T0 + 1), rec])
    e2 = msgpack.packb([[et(T0 + 2), {"source": "x"}], rec])  # Fluent Bit's metadata shape
    e3 = msgpack.packb([T0 // S + 3, {"temp": 19.0}])  # integer seconds
    e4 = msgpack.packb([et(T0 + 4), {"temp": 18.0}])
    messages = [
        ["greenhouse", et(T0), rec, {"chunk": "c-message"}],
        ["greenhouse", [[et(T0 + 1), rec], [[et(T0 + 2), {}], rec]], {"chunk": "c-forward"}],
        ["greenhouse", e1 + e2, {"chunk": "c-packed", "size": 2}],
        [
            "greenhouse",
            gzip.compress(e3) + gzip.compress(e4),  # two gzip members
            {"chunk": "c-gzip", "size": 2, "compressed": "gzip"},
        ],
    ]
    expected = [Row("greenhouse/door", "state", "", {"host": "gh-a"}, T0 + k, 1) for k in range(3)]
    expected += [Row("greenhouse/humidity", "counter", "", {"host": "gh-a"}, T0 + k, 40)
                 for k in range(3)]  # fmt: skip
    expected += [Row("greenhouse/temp", "temperature", "C", {"host": "gh-a"}, T0 + k, 21.5)
                 for k in range(3)]  # fmt: skip
    expected += [
        Row("greenhouse/temp", "temperature", "C", {}, T0 + 3 * S, 19.0),
        Row("greenhouse/temp", "temperature", "C", {}, T0 + 4, 18.0),
    ]
    expected.sort(key=lambda r: (r.sensor, r.ts, str(r.tags)))
    with connect(daemon, "greenhouse-1", token) as c:
        for rounds in range(2):
            for i, m in enumerate(messages):
                c.send(m)
                assert c.recv() == {"ack": m[-1]["chunk"]}  # type: ignore[index]
                if rounds == 0 and i == 0:  # the ack follows the commit
                    assert len(stored_rows(daemon.db, "greenhouse-1")) == 3
    assert stored_rows(daemon.db, "greenhouse-1") == expected
    assert dead_letters(daemon.db, "greenhouse-1") == []


def test_values_that_are_not_readings_are_dead_lettered_with_a_reason(daemon):
    token = daemon.add_device("mixed-1")
    rec = {"temp": -500.0, "status": "ok", "nested": {"a": 1}, "level": 3.5}
    with connect(daemon, "mixed-1", token) as c:
        c.send(["greenhouse", et(T0), rec, {"chunk": "c1"}])
        assert c.recv() == {"ack": "c1"}
        c.send(["greenhouse", [[et(T0), {"x": 1}], "not an entry"], {"chunk": "c2"}])
        assert c.recv() == {"ack": "c2"}
    assert stored_rows(daemon.db, "mixed-1") == [
        Row("greenhouse/level", "gauge", "", {}, T0, 3.5),
        Row("greenhouse/x", "counter", "", {}, T0, 1),
    ]
    dead = dead_letters(daemon.db, "mixed-1")
    assert {(d.path, d.code, d.idx) for d in dead} == {
        ("status", "wrong_type", 0),
        ("nested", "wrong_type", 0),
        ("value", "out_of_range", 0),  # temp below absolute zero, found by the schemas
        ("", "invalid", 1),  # the second entry of the second message is not [time, record]
    }
    assert all(d.message.startswith("greenhouse: ") for d in dead)


def test_the_handshake_refuses_wrong_keys_unknown_and_revoked_devices(daemon):
    token = daemon.add_device("hs-1")
    key = forward_key_of_token(token)
    with ForwardClient(daemon.forward) as c:
        assert c.handshake("hs-1", "wrong key")[:2] == ["PONG", False]
        assert c.closed()
    with ForwardClient(daemon.forward) as c:
        assert c.handshake("no-such-device", key)[:2] == ["PONG", False]
        assert c.closed()
    with ForwardClient(daemon.forward) as c:  # the token itself is not the forward key
        assert c.handshake("hs-1", token)[:2] == ["PONG", False]
    with ForwardClient(daemon.forward) as c:  # username + password: both prove the key
        assert c.handshake("any-host", key, "hs-1", "wrong")[:2] == ["PONG", False]
    with ForwardClient(daemon.forward) as c:
        assert c.handshake("any-host", key, "hs-1", key)[:3] == ["PONG", True, ""]
        c.send(["t", et(T0), {"v": 1.5}, {"chunk": "a"}])
        assert c.recv() == {"ack": "a"}
    with ForwardClient(daemon.forward) as c:  # events instead of a PING
        assert c.recv()[0] == "HELO"
        c.send(["t", et(T0 + 1), {"v": 9.0}, {"chunk": "b"}])
        assert c.recv()[:2] == ["PONG", False]
        assert c.closed()
    subprocess.run(
        [sys.executable, "-m", "collector", "devices", "revoke", "hs-1", "--db", str(daemon.db)],
        check=True,
        capture_output=True,
    )
    with ForwardClient(daemon.forward) as c:
        assert c.handshake("hs-1", key)[:2] == ["PONG", False]
    assert stored_rows(daemon.db, "hs-1") == [Row("t/v", "gauge", "", {}, T0, 1.5)]


def test_silence_during_and_after_the_handshake_closes_the_connection(daemon):
    token = daemon.add_device("quiet-1")
    with ForwardClient(daemon.forward) as c:
        assert c.recv()[0] == "HELO"
        t0 = time.monotonic()
        assert c.closed(timeout=10)  # no PING within the handshake timeout (2 s)
        assert 1.5 < time.monotonic() - t0 < 8
    with connect(daemon, "quiet-1", token) as c:
        t0 = time.monotonic()
        assert c.closed(timeout=10)  # idle timeout (3 s)
        assert 2.5 < time.monotonic() - t0 < 9


def test_gzip_bombs_and_oversized_messages_are_refused(daemon):
    token = daemon.add_device("bomb-1")
    bomb = gzip.compress(b"\0" * (fluent.MAX_DECOMPRESSED_BYTES + 1024), compresslevel=9)
    with connect(daemon, "bomb-1", token) as c:
        c.send(["t", bomb, {"compressed": "gzip", "chunk": "bomb"}])
        c.send(["t", et(T0), {"v": 1.0}, {"chunk": "after"}])
        assert c.recv() == {"ack": "after"}  # the bomb got no ack; the connection lives on
        c.sock.sendall(b"\x92\xa1t\xc6" + (fluent.MAX_MESSAGE_BYTES + 1).to_bytes(4, "big"))
        c.sock.sendall(b"\0" * (fluent.MAX_MESSAGE_BYTES + 1))
        assert c.closed()
    with connect(daemon, "bomb-1", token) as c:
        c.sock.sendall(b"\xc1 not msgpack")  # no framing to resynchronise on: closed
        assert c.closed()
    assert stored_rows(daemon.db, "bomb-1") == [Row("t/v", "gauge", "", {}, T0, 1.0)]


# ---------------------------------------------------------------- fluent-logger, TLS


def test_fluent_logger_with_per_record_tokens_stores_once(tmp_path):
    from fluent import sender

    inputs = '[forward]\nauth = "record"\ntoken_key = "_token"\n'
    with InputsCollector(tmp_path, forward=True, inputs_toml=inputs) as d:
        token = d.add_device("logger-1")
        host, port = d.forward
        log = sender.FluentSender("app", host=host, port=port, nanosecond_precision=True)
        try:
            for _ in range(2):  # the second round is a resend of the same events
                for k in range(3):
                    ok = log.emit_with_time("sensors", T0 // S + k, {"_token": token, "v": k + 0.5})
                    assert ok, log.last_error
            assert log.emit_with_time("sensors", T0 // S, {"_token": "bad", "v": 99.0})
        finally:
            log.close()
        deadline = time.monotonic() + 20
        while len(stored_rows(d.db, "logger-1")) < 3:
            assert time.monotonic() < deadline, d.log
            time.sleep(0.05)
        assert d.http is not None
        metrics = _get(d, "/metrics/inputs")
        deadline = time.monotonic() + 20
        while "telemetry_input_forward_unauthenticated_events_total 1" not in metrics:
            assert time.monotonic() < deadline, metrics
            time.sleep(0.05)
            metrics = _get(d, "/metrics/inputs")
        assert stored_rows(d.db, "logger-1") == [
            Row("app.sensors/v", "gauge", "", {}, T0 + k * S, k + 0.5) for k in range(3)
        ]
        assert dead_letters(d.db, "logger-1") == []


def _get(d: InputsCollector, path: str) -> str:
    import http.client

    assert d.http is not None
    host, port = d.http
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_tls_with_the_collectors_certificates(tmp_path):
    pki = tmp_path / "pki"
    runner = CliRunner()
    for args in (
        ["certs", "ca", "--dir", str(pki)],
        ["certs", "collector", "--dir", str(pki), "--host", "127.0.0.1"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    with InputsCollector(
        tmp_path,
        forward=True,
        tls_cert=str(pki / "collector.pem"),
        tls_key=str(pki / "collector.key"),
    ) as d:
        token = d.add_device("tls-1")
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        with ForwardClient(d.forward, ctx) as c:
            assert c.handshake("tls-1", forward_key_of_token(token))[:2] == ["PONG", True]
            c.send(["t", et(T0), {"v": 2.0}, {"chunk": "tls"}])
            assert c.recv() == {"ack": "tls"}
        with ForwardClient(d.forward) as plain:  # plain TCP on a TLS listener: no HELO
            plain.sock.sendall(msgpack.packb(["t", et(T0 + 1), {"v": 3.0}]))
            assert plain.closed()
        assert stored_rows(d.db, "tls-1") == [Row("t/v", "gauge", "", {}, T0, 2.0)]


def test_shutdown_closes_forward_connections_and_exits_cleanly(tmp_path):
    d = InputsCollector(tmp_path, forward=True).start()
    try:
        token = d.add_device("stop-1")
        busy = connect(d, "stop-1", token)
        waiting = ForwardClient(d.forward)  # still in the handshake
        assert waiting.recv()[0] == "HELO"
        busy.send(["t", et(T0), {"v": 1.0}, {"chunk": "last"}])
        assert busy.recv() == {"ack": "last"}
        assert d.terminate() == 0
        assert busy.closed() and waiting.closed()
        busy.sock.close()
        waiting.sock.close()
    finally:
        d.kill()
    assert "forward disconnected device=stop-1" in d.log
    assert stored_rows(d.db, "stop-1") == [Row("t/v", "gauge", "", {}, T0, 1.0)]


NODE_SENDER = """
// argv: host port client_hostname shared_key mode n t0_seconds [username]
const [host, port, device, key, mode, n, t0, username] = process.argv.slice(2);
const fluent = require('fluent-logger');
const security = {clientHostname: device, sharedKey: key};
if (username) { security.username = username; security.password = key; }
const logger = fluent.createFluentSender('node', {
  host, port: Number(port), timeout: 5.0, requireAckResponse: true, eventMode: mode,
  ackResponseTimeout: 10000, enableReconnect: false, security,
});
let left = Number(n);
const fail = (err) => { console.error('error', err.message || err); process.exit(1); };
logger.on('error', fail);
for (let i = 0; i < Number(n); i++) {
  logger.emit('sensors', {v: i + 0.5, host: 'n1'}, new fluent.EventTime(Number(t0) + i, 250),
    (err) => { if (err) fail(err); if (--left === 0) { logger.end(); console.log('acked'); } });
}
"""


# Third-party Node.js senders, installed from the committed lock file when missing.
NODE_SENDERS = Path(__file__).resolve().parents[1] / "fixtures" / "node"


def _node_fluent_logger() -> dict[str, str] | None:
    """The environment that lets node require('fluent-logger'), or None without node/npm."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return None
    modules = NODE_SENDERS / "node_modules"
    if not (modules / "fluent-logger").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"],
            cwd=NODE_SENDERS,
            capture_output=True,
            timeout=300,
        )
    env = {**os.environ, "NODE_PATH": str(modules)}
    probe = subprocess.run(
        ["node", "-e", "require('fluent-logger')"], capture_output=True, timeout=30, env=env
    )
    return env if probe.returncode == 0 else None


def test_node_fluent_logger_handshake_acks_and_packed_modes(daemon, tmp_path):
    env = _node_fluent_logger()
    if env is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but node/npm is missing or `npm ci` in tests/fixtures/node failed")
        pytest.skip("needs Node.js 20+ with npm (the test installs fluent-logger itself)")
    script = tmp_path / "send.js"
    script.write_text(NODE_SENDER)
    token = daemon.add_device("node-1")
    key = forward_key_of_token(token)
    host, port = daemon.forward

    def send(client: str, secret: str, mode: str, n: int, t0: int, *user: str) -> int:
        args = [str(port), client, secret, mode, str(n), str(t0), *user]
        return subprocess.run(["node", str(script), host, *args], timeout=60, env=env).returncode

    sec = T0 // S
    # Every mode this sender has, each waiting for acks; the third round resends the first.
    assert send("node-1", key, "Message", 3, sec) == 0
    assert send("node-1", key, "PackedForward", 3, sec + 10) == 0
    assert send("node-1", key, "CompressedPackedForward", 3, sec + 20) == 0
    assert send("node-1", key, "Message", 3, sec) == 0
    assert send("any-host", key, "Message", 1, sec + 30, "node-1") == 0  # username + password
    assert send("node-1", "wrong key", "Message", 1, sec + 40) != 0
    expected = [
        Row("node.sensors/v", "gauge", "", {"host": "n1"}, (sec + base + i) * S + 250, i + 0.5)
        for base, count in ((0, 3), (10, 3), (20, 3), (30, 1))
        for i in range(count)
    ]
    assert stored_rows(daemon.db, "node-1") == expected


def test_connections_per_address_are_capped(tmp_path):
    with InputsCollector(tmp_path, forward=True, limits={"max_connections_per_ip": 1}) as d:
        with ForwardClient(d.forward) as first:
            assert first.recv()[0] == "HELO"
            with ForwardClient(d.forward) as second:
                assert second.closed()  # refused: no HELO, closed
        deadline = time.monotonic() + 10
        while "forward disconnected device=- " not in d.log:  # the first one has gone
            assert time.monotonic() < deadline, d.log
            time.sleep(0.02)
        with ForwardClient(d.forward) as again:  # and its slot is free again
            assert again.recv()[0] == "HELO"
        assert "reason=max_connections_per_ip" in d.log
