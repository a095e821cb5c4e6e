"""TLS on the ingest link, with the real collector and agent programs over 127.0.0.1.

Certificates are made by `collector.certs` in tmp_path: a deployment CA ("good") with a
collector certificate for 127.0.0.1 and device certificates, and a second CA ("other") an
attacker controls. Refusals are checked on the stored rows, not only on the connection error:
a refused connection stores nothing (no readings, series or dead letters) for any device.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.tls import client_context
from collector import certs
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
from tests.reliability.test_security import attack_frames, rows

N = 200  # readings per agent sensor
SENSORS = ["tls/a", "tls/b"]


def _pki(d: Path) -> Path:
    certs.create_ca(d)
    certs.issue(d, "collector", server=True, hosts=("127.0.0.1", "localhost"))
    for dev in ("dev-a", "dev-b", "dev-c"):
        certs.issue(d, dev, server=False)
    return d


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pki")
    return _pki(root / "good"), _pki(root / "other")


def tls_args(good: Path, *, mutual: bool) -> list[str]:
    args = ["--tls-cert", str(good / "collector.pem"), "--tls-key", str(good / "collector.key")]
    return [*args, "--tls-client-ca", str(good / "ca.pem")] if mutual else args


def tls_agent(tmp: Path, device: str, token: str, port: int, tls: str) -> Agent:
    agent = Agent(tmp, device, token)
    agent.configure(port, counter_input(SENSORS, N, interval="5ms"))
    # [tls] after the [[inputs]] array: a table header ends the array of tables.
    agent.config.write_text(agent.config.read_text() + f"[tls]\nenabled = true\n{tls}")
    return agent


def ca_only(d: Path) -> str:
    return f'ca_file = "{d / "ca.pem"}"\n'


def with_cert(d: Path, ca: Path, device: str) -> str:
    return ca_only(ca) + f'cert_file = "{d / device}.pem"\nkey_file = "{d / device}.key"\n'


@pytest.fixture
def devices_db(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    db = tmp_path / "tls.db"
    return db, add_devices(db, ["dev-a", "dev-b", "dev-c"])


@pytest.fixture
def stop_agents() -> Iterator[list[Agent]]:
    agents: list[Agent] = []
    yield agents
    for a in agents:
        a.stop()


def expected(device: str) -> dict[tuple[str, str], int]:
    return {(device, s): N for s in SENSORS}


def test_tls_agent_streams_and_an_agent_trusting_another_ca_is_refused(
    tmp_path, pki, devices_db, stop_agents
):
    good, other = pki
    db, tokens = devices_db
    with CollectorProcess(db, *tls_args(good, mutual=False), env=ENV) as d:
        assert "tls=on" in d.log
        port = d.ingest[1]
        ok = tls_agent(tmp_path, "dev-a", tokens["dev-a"], port, ca_only(good))
        # Valid token, but it trusts another CA: it must not connect (nor send its token).
        wrong = tls_agent(tmp_path, "dev-b", tokens["dev-b"], port, ca_only(other))
        stop_agents += [ok.start(), wrong.start()]

        # A plain-TCP client on the TLS port fails cleanly while the others are served.
        with WireClient(*d.ingest, timeout=5) as plain:
            plain.send_raw(attack_frames("dev-c", tokens["dev-c"]))
            try:
                answer: object = plain.recv(timeout=5)
            except ConnectionError as exc:  # a reset is as clean as a close
                answer = exc
            # Closed at once (a plain HELLO is no TLS ClientHello), never a WELCOME.
            assert isinstance(answer, wire.ConnectionClosed | ConnectionError), answer

        took = wait_for(lambda: stored(db, "dev-a").total >= len(SENSORS) * N, "TLS readings")
        assert_exactly_once(stored(db, "dev-a"), expected("dev-a"))
        wait_for(lambda: "certificate was refused" in wrong.text(), "the refused agent's log")
        assert "check [tls] ca_file and server_name" in wrong.text()
        assert wrong.running  # it keeps retrying with backoff, it does not crash

        # The collector still serves TLS clients after the plain one.
        ctx = client_context(good / "ca.pem")
        with WireClient(*d.ingest, ssl_context=ctx) as c:
            assert isinstance(c.hello("dev-c", tokens["dev-c"]), wire.Welcome)
            ack = c.batch(1, [["c/t", "temperature", time.time_ns(), 20.0, "C", None]])
            assert isinstance(ack, wire.Ack) and ack.accepted == 1
    r = rows(db)
    assert r["dev-b"] == (0, 0, 0)
    # The TLS client's one reading; nothing from the plain one (head rows may be compacted,
    # so readings are counted through collector.storage.sqlite.scan).
    assert r["dev-c"][1:] == (1, 0) and stored(db, "dev-c").total == 1
    report("tls server cert", {"readings": len(SENSORS) * N, "seconds": round(took, 2)})


def mtls_client(d: CollectorProcess, ca: Path, cert_dir: Path | None, device: str) -> WireClient:
    ctx = client_context(
        ca / "ca.pem",
        None if cert_dir is None else cert_dir / f"{device}.pem",
        None if cert_dir is None else cert_dir / f"{device}.key",
    )
    return WireClient(*d.ingest, ssl_context=ctx, timeout=10)


def refused_by_tls(d: CollectorProcess, ca: Path, cert_dir: Path | None, frames: bytes) -> str:
    """The connection must fail in or right after the TLS handshake; returns how."""
    try:
        with mtls_client(d, ca, cert_dir, "dev-a") as c:
            c.send_raw(frames)
            ev = c.recv(timeout=10)
    except (ssl.SSLError, ConnectionError) as exc:
        return type(exc).__name__
    # TLS 1.3: the server checks the client certificate after the client's handshake ends.
    assert isinstance(ev, wire.ConnectionClosed), ev
    return "closed"


def test_mutual_tls_refuses_foreign_certs_and_certs_for_another_device(
    tmp_path, pki, devices_db, stop_agents
):
    good, other = pki
    db, tokens = devices_db
    with CollectorProcess(db, *tls_args(good, mutual=True), env=ENV) as d:
        assert "tls=mutual" in d.log
        agent = tls_agent(
            tmp_path, "dev-a", tokens["dev-a"], d.ingest[1], with_cert(good, good, "dev-a")
        )
        stop_agents.append(agent.start())

        # A device certificate from another CA, and no certificate at all: refused by TLS.
        how_foreign = refused_by_tls(d, good, other, attack_frames("dev-a", tokens["dev-a"]))
        how_none = refused_by_tls(d, good, None, attack_frames("dev-a", tokens["dev-a"]))

        # dev-a's valid certificate, HELLO as dev-b with dev-b's valid token, batches behind.
        with mtls_client(d, good, good, "dev-a") as c:
            c.send_raw(attack_frames("dev-b", tokens["dev-b"]))
            ev = c.recv(timeout=10)
            assert isinstance(ev, wire.Error) and ev.code == errors.AUTH_FAILED and ev.fatal
            assert c.closed_by_peer(10)
        # The certificate does not replace the token: dev-c's cert with a wrong token.
        with mtls_client(d, good, good, "dev-c") as c:
            ev = c.hello("dev-c", tokens["dev-b"])
            assert isinstance(ev, wire.Error) and ev.code == errors.AUTH_FAILED
        wait_for(lambda: stored(db, "dev-a").total >= len(SENSORS) * N, "mTLS agent readings")
        assert_exactly_once(stored(db, "dev-a"), expected("dev-a"))
        # Control: dev-c with its own certificate and token is served.
        with mtls_client(d, good, good, "dev-c") as c:
            assert isinstance(c.hello("dev-c", tokens["dev-c"]), wire.Welcome)
        assert "client certificate names dev-a" in d.log
    r = rows(db)
    assert r["dev-b"] == (0, 0, 0), r
    assert r["dev-c"] == (0, 0, 0), r
    assert r["dev-a"][1:] == (len(SENSORS), 0), r  # the agent's series, nothing else
    assert how_foreign and how_none
    report("tls mutual", {"attacks_refused": 4, "rows_for_victims": 0})


def test_check_config_loads_the_tls_files(tmp_path, pki):
    import subprocess
    import sys

    good, _ = pki
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    cert, key = str(good / "collector.pem"), str(good / "collector.key")
    cases = [
        ("tls_cert", ["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", key]),
        ("tls_key", ["--tls-cert", cert, "--tls-key", str(good / "nope.key")]),
        ("tls_cert", ["--tls-cert", cert, "--tls-key", str(good / "dev-a.key")]),  # mismatch
        ("tls_client_ca", ["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", str(bad)]),
    ]
    for needle, args in cases:
        out = subprocess.run(
            [sys.executable, "-m", "collector", "collector", "--check-config", *args],
            capture_output=True, text=True, timeout=60, env=ENV,
        )  # fmt: skip
        assert out.returncode == 2, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and f"setting '{needle}'" in lines[0], out.stderr
    args = tls_args(good, mutual=True)
    ok = subprocess.run(
        [sys.executable, "-m", "collector", "collector", "--check-config", *args],
        capture_output=True, text=True, timeout=60, env=ENV,
    )  # fmt: skip
    assert ok.returncode == 0 and "TLS mutual" in ok.stdout, ok.stderr
