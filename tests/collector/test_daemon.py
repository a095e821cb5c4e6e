"""The collector daemon as a subprocess, driven over real TCP with the raw wire client.

One daemon serves most tests (module fixture); shutdown, kill and limit tests start their
own. Every assertion about storage reads the SQLite file through a separate read-only
connection.
"""

from __future__ import annotations

import json
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.storage.sqlite import scan, store
from schemas import errors, wire
from tests.collector.wireclient import CollectorProcess, WireClient

NS = 1_000_000_000
T0 = 1_750_000_000 * NS


def readings(n: int, *, start: int = 0, sensor: str = "air") -> list[object]:
    return [[f"{sensor}{i % 5}", "temperature", T0 + start + i, 20.0 + i % 7, "C", None]
            for i in range(n)]  # fmt: skip


def query(db: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = store.connect(db, readonly=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def stored_ts(db: Path) -> list[int]:
    """Timestamps of every stored reading, in the head or compacted into blocks."""
    conn = store.connect(db, readonly=True)
    try:
        sids = [int(r[0]) for r in conn.execute(f"SELECT id FROM {store.SERIES}")]
        return [ts for _, ts, _ in scan.read_range(conn, sids, None, None)]
    finally:
        conn.close()


def stored_count(db: Path) -> int:
    return len(stored_ts(db))


def http_get(addr: tuple[str, int] | None, path: str) -> tuple[int, str]:
    assert addr is not None
    try:
        with urllib.request.urlopen(f"http://{addr[0]}:{addr[1]}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    db = tmp_path_factory.mktemp("daemon") / "t.db"
    with CollectorProcess(db) as d:
        yield d


def connect(d: CollectorProcess, name: str, token: str, stream: str = "") -> WireClient:
    c = WireClient(*d.ingest)
    welcome = c.hello(name, token, stream=stream)
    assert isinstance(welcome, wire.Welcome), welcome
    return c


def test_auth_success_wrong_token_and_revoked(daemon: CollectorProcess) -> None:
    token = daemon.add_device("auth-1")
    with WireClient(*daemon.ingest) as c:
        welcome = c.hello("auth-1", token, agent="test", agent_version="1")
        assert isinstance(welcome, wire.Welcome) and welcome.last_seq == 0
    for name, tok in [("auth-1", token[:-1] + "x"), ("no-such-device", token)]:
        with WireClient(*daemon.ingest) as c:
            err = c.hello(name, tok)
            assert isinstance(err, wire.Error) and err.code == errors.AUTH_FAILED and err.fatal
            assert c.closed_by_peer()
    subprocess.run(
        [sys.executable, "-m", "collector", "devices", "revoke", "auth-1", "--db", str(daemon.db)],
        check=True,
        capture_output=True,
    )
    with WireClient(*daemon.ingest) as c:
        err = c.hello("auth-1", token)
        assert isinstance(err, wire.Error) and err.code == errors.AUTH_FAILED
        assert c.closed_by_peer()
    assert "authentication failed device=auth-1" in daemon.log


def test_device_cannot_write_as_another(daemon: CollectorProcess) -> None:
    tok_a = daemon.add_device("imp-a")
    daemon.add_device("imp-b")
    with WireClient(*daemon.ingest) as c:  # b's name with a's token
        err = c.hello("imp-b", tok_a)
        assert isinstance(err, wire.Error) and err.code == errors.AUTH_FAILED
    with connect(daemon, "imp-a", tok_a) as c:
        # A second HELLO claiming another identity is refused; the session stays imp-a.
        c.send_raw(wire.encode(wire.Hello(device_id="imp-b", token=tok_a)))
        err = c.recv()
        assert isinstance(err, wire.Error) and err.code == errors.UNEXPECTED_MESSAGE
        ack = c.batch(1, readings(3, sensor="imp"))
        assert isinstance(ack, wire.Ack) and ack.accepted == 3
    rows = query(
        daemon.db,
        f"SELECT d.name, count(*) FROM {store.SERIES} s JOIN {store.DEVICES} d "
        "ON d.id = s.device_id WHERE d.name LIKE 'imp-%' GROUP BY d.name",
    )
    assert rows == [("imp-a", 3)]
    assert query(daemon.db, f"SELECT last_seq FROM {store.DEVICES} WHERE name='imp-b'") == [(0,)]


def test_ack_follows_commit_visible_to_other_connection(daemon: CollectorProcess) -> None:
    token = daemon.add_device("ack-1")
    before = stored_count(daemon.db)
    with connect(daemon, "ack-1", token) as c:
        ack = c.batch(1, readings(500, sensor="ack"))
        # Checked at the moment the ACK arrived, from a separate read connection.
        assert stored_count(daemon.db) - before == 500
        assert isinstance(ack, wire.Ack)
        assert (ack.seq, ack.accepted, ack.duplicate, ack.rejects) == (1, 500, 0, ())
    assert query(daemon.db, f"SELECT last_seq FROM {store.DEVICES} WHERE name='ack-1'") == [(1,)]


def test_mixed_batch_rejects_by_index_and_dead_letters(daemon: CollectorProcess) -> None:
    token = daemon.add_device("mix-1")
    batch: list[object] = [
        ["mix", "temperature", T0, 21.0, "C", None],
        ["mix", "temperature", T0 + 1, -300.0, "C", None],  # below absolute zero
        ["mix", "humidity", T0, 50.0, None, {"room": "a"}],
        ["mix", "warp_speed", T0, 9, None, None],
        [1, 2, 3],
        ["pos", "gps", T0, {"lat": 1.0, "lon": 2.0}, None, None],
    ]
    with connect(daemon, "mix-1", token) as c:
        ack = c.batch(1, batch)
    assert isinstance(ack, wire.Ack) and ack.accepted == 3 and ack.duplicate == 0
    assert [(r.index, r.code, r.path) for r in ack.rejects] == [
        (1, "out_of_range", "value"),
        (3, "unknown_kind", "kind"),
        (4, "not_a_reading", ""),
    ]
    dead = query(
        daemon.db,
        f"SELECT r.seq, r.idx, r.code, r.path, r.reading FROM {store.REJECTED} r "
        f"JOIN {store.DEVICES} d ON d.id = r.device_id WHERE d.name = 'mix-1' ORDER BY r.idx",
    )
    assert [(s, i, code, path) for s, i, code, path, _ in dead] == [
        (1, 1, "out_of_range", "value"),
        (1, 3, "unknown_kind", "kind"),
        (1, 4, "not_a_reading", ""),
    ]
    assert json.loads(str(dead[0][4])) == batch[1]
    fields = query(
        daemon.db,
        f"SELECT s.field FROM {store.SERIES} s JOIN {store.DEVICES} d ON d.id = s.device_id "
        "WHERE d.name = 'mix-1' AND s.kind = 'gps' ORDER BY s.field",
    )
    assert fields == [("lat",), ("lon",)]


def test_resend_is_acked_as_duplicate_and_stores_nothing(daemon: CollectorProcess) -> None:
    token = daemon.add_device("dup-1")
    batch = [*readings(50, sensor="dup"), ["dup", "humidity", T0, 120.0, None, None]]
    with connect(daemon, "dup-1", token) as c:
        first = c.batch(1, batch)
    assert isinstance(first, wire.Ack) and first.accepted == 50
    rows, dead = stored_count(daemon.db), query(daemon.db, f"SELECT count(*) FROM {store.REJECTED}")
    with connect(daemon, "dup-1", token) as c:  # after a reconnect, as an agent would
        again = c.batch(1, batch)
        rebatched = c.batch(2, batch[:20])
    assert isinstance(again, wire.Ack)
    assert (again.accepted, again.duplicate, again.rejects) == (0, 50, first.rejects)
    assert isinstance(rebatched, wire.Ack) and (rebatched.accepted, rebatched.duplicate) == (0, 20)
    assert stored_count(daemon.db) == rows
    assert query(daemon.db, f"SELECT count(*) FROM {store.REJECTED}") == dead


def test_malformed_frames_answered_until_budget_spent(daemon: CollectorProcess) -> None:
    token = daemon.add_device("bad-1")
    garbage = struct.pack(">I", 3) + b"\xc1\xc1\xc1"  # 0xc1 is never valid msgpack
    with connect(daemon, "bad-1", token) as c:
        c.send_raw(garbage)
        err = c.recv()
        assert isinstance(err, wire.Error) and err.code == errors.MALFORMED_FRAME
        assert not err.fatal
        ack = c.batch(1, readings(2, sensor="bad"))  # the connection survived
        assert isinstance(ack, wire.Ack) and ack.accepted == 2
        for _ in range(wire.BAD_FRAME_BUDGET - 1):
            c.send_raw(garbage)
            err = c.recv()
            assert isinstance(err, wire.Error) and not err.fatal
        c.send_raw(garbage)
        err = c.recv()
        assert isinstance(err, wire.Error) and err.code == errors.TOO_MANY_BAD_FRAMES and err.fatal
        assert c.closed_by_peer()


def test_oversized_declared_length_refused_without_body(daemon: CollectorProcess) -> None:
    token = daemon.add_device("big-1")
    with connect(daemon, "big-1", token) as c:
        c.send_raw(struct.pack(">I", wire.MAX_FRAME_BYTES + 1))  # the header only
        err = c.recv()
        assert isinstance(err, wire.Error) and err.code == errors.FRAME_TOO_LARGE and err.fatal
        assert c.closed_by_peer()


def test_ping_is_answered(daemon: CollectorProcess) -> None:
    token = daemon.add_device("ping-1")
    with connect(daemon, "ping-1", token) as c:
        c.send(wire.Ping(42))
        assert c.recv() == wire.Pong(42)


def test_http_health_metrics_and_devices(daemon: CollectorProcess) -> None:
    token = daemon.add_device("http-1")
    with connect(daemon, "http-1", token) as c:
        ack = c.batch(1, [*readings(4, sensor="http"), ["h", "humidity", T0, -1.0, None, None]])
        assert isinstance(ack, wire.Ack)
        assert http_get(daemon.http, "/healthz")[0] == 200
        assert http_get(daemon.http, "/readyz")[0] == 200
        status, text = http_get(daemon.http, "/metrics")
        assert status == 200
        assert 'telemetry_device_readings_accepted_total{device="http-1"} 4' in text
        assert 'telemetry_device_readings_rejected_total{device="http-1"} 1' in text
        assert "telemetry_commit_seconds_count" in text
        assert "telemetry_connections_open " in text
        status, body = http_get(daemon.http, "/api/v1/devices")
        assert status == 200
        rows = [r for r in json.loads(body)["devices"] if "http-1" in r.values()]
        assert len(rows) == 1 and rows[0]["connected"] in (True, 1)
        assert daemon.http is not None
        url = f"http://{daemon.http[0]}:{daemon.http[1]}"
        listed = {
            r["device"]: r for r in json.loads(_devices_list("--url", url, "--format", "json"))
        }
        assert listed["http-1"]["connected"] is True
    from_file = {
        r["device"]: r
        for r in json.loads(_devices_list("--db", str(daemon.db), "--format", "json"))
    }
    assert from_file["http-1"]["readings"] == 4 and from_file["http-1"]["series"] == 4


def _devices_list(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "collector", "devices", "list", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def test_sigterm_acks_inflight_batches_then_exits_0(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with CollectorProcess(db) as d:
        token = d.add_device("term-1")
        c = connect(d, "term-1", token)
        n_batches, size = 40, 250
        for seq in range(1, n_batches + 1):
            c.send(wire.Batch(seq, readings(size, start=seq * size, sensor="term")))
        first = c.recv()
        assert isinstance(first, wire.Ack)
        acked = [first]
        assert d.proc is not None
        d.proc.send_signal(15)
        bye = None
        while True:
            ev = c.recv()
            if isinstance(ev, wire.Ack):
                acked.append(ev)
            else:
                bye = ev
                break
        c.close()
        assert d.terminate() == 0
    assert isinstance(bye, wire.Bye | wire.ConnectionClosed)
    assert [a.seq for a in acked] == list(range(1, len(acked) + 1))
    # Every acknowledged reading is stored, and nothing unacknowledged.
    assert len(stored_ts(db)) == sum(a.accepted for a in acked) == len(acked) * size
    assert query(db, "PRAGMA integrity_check") == [("ok",)]


def test_sigkill_mid_stream_keeps_every_acked_reading(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    d = CollectorProcess(db).start()
    size = 200
    acked: list[int] = []
    try:
        token = d.add_device("kill-1")
        c = connect(d, "kill-1", token)
        seq = 0
        while len(acked) < 30:
            for _ in range(4):  # keep a few batches in flight
                seq += 1
                c.send(wire.Batch(seq, readings(size, start=seq * size, sensor="kill")))
            for _ in range(4):
                ack = c.recv()
                assert isinstance(ack, wire.Ack)
                acked.append(ack.seq)
        for _ in range(8):
            seq += 1
            c.send(wire.Batch(seq, readings(size, start=seq * size, sensor="kill")))
        d.kill()  # SIGKILL with batches in flight
        c.close()
        d.start()
        with WireClient(*d.ingest) as c2:
            welcome = c2.hello("kill-1", token)
            assert isinstance(welcome, wire.Welcome) and welcome.last_seq >= max(acked)
        assert d.terminate() == 0
    finally:
        d.kill()
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    stored = set(stored_ts(db))
    for s in acked:
        assert {T0 + s * size + i for i in range(size)} <= stored


def test_limits_handshake_idle_and_max_connections(tmp_path: Path) -> None:
    args = ["--handshake-timeout-s", "0.5", "--heartbeat-ms", "200", "--idle-timeout-s", "1"]
    with CollectorProcess(tmp_path / "t.db", *args, "--max-connections", "2") as d:
        token = d.add_device("lim-1")
        with WireClient(*d.ingest) as silent:
            err = silent.recv(timeout=10)
            assert isinstance(err, wire.Error) and err.code == errors.HANDSHAKE_TIMEOUT
            assert silent.closed_by_peer()
        with connect(d, "lim-1", token) as c:
            # A silent agent is pinged after a heartbeat, then cut off at the idle timeout.
            assert isinstance(c.recv(answer_pings=False), wire.Ping)
            err = c.recv(answer_pings=False)
            while isinstance(err, wire.Ping):
                err = c.recv(answer_pings=False)
            assert isinstance(err, wire.Error) and err.code == errors.IDLE_TIMEOUT
            assert c.closed_by_peer()
        # Two streams of one device are two live sessions (one stream's would replace).
        a, b = connect(d, "lim-1", token, "s-a"), connect(d, "lim-1", token, "s-b")
        with WireClient(*d.ingest) as third:
            err = third.recv()
            assert isinstance(err, wire.Error) and err.code == errors.SERVER_BUSY
        a.close()
        b.close()


def test_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('listen = "127.0.0.1:0"\n[limits]\nmax_connections = -3\n')
    cases = [
        ["--config", str(cfg)],
        ["--listen", "nowhere"],
        ["--kinds", str(tmp_path / "missing.toml")],
    ]
    for args in cases:
        out = subprocess.run(
            [sys.executable, "-m", "collector", "collector", "--check-config", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "error" in lines[0], out.stderr
    assert (
        "max_connections"
        in subprocess.run(
            [sys.executable, "-m", "collector", "collector", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        ).stderr
    )


def test_listen_address_in_use_is_one_line_exit_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "collector", "collector", "--db", str(tmp_path / "t.db"),
             "--listen", f"127.0.0.1:{port}", "--http", "off"],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert "setting 'listen'" in last and "Traceback" not in out.stderr


def test_check_config_merges_file_env_and_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('db = "from-file.db"\nlog_level = "DEBUG"\n[limits]\nmax_connections = 7\n')
    out = subprocess.run(
        [sys.executable, "-m", "collector", "collector", "--config", str(cfg), "--check-config",
         "--log-level", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "TELEMETRY_DB": "from-env.db",
             "TELEMETRY_MAX_CONNECTIONS": "9"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "config ok" in out.stdout
    assert "from-env.db" in out.stdout and "from-file.db" not in out.stdout
    assert "log level    WARNING" in out.stdout
    assert "9 connections" in out.stdout


def test_sqlite_file_is_plain(tmp_path: Path) -> None:
    # The daemon's file is readable by stock sqlite3 (WAL mode, our tables).
    db = tmp_path / "t.db"
    with CollectorProcess(db):
        pass
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    assert time.time() > 0


def test_systemd_notify_ready_and_stopping(tmp_path: Path) -> None:
    import socket
    import tempfile

    # AF_UNIX paths are short (108 bytes): pytest's tmp_path may be too long.
    with tempfile.TemporaryDirectory(prefix="tn-") as short:
        path = str(Path(short) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(30)
            d = CollectorProcess(tmp_path / "t.db", env={"NOTIFY_SOCKET": path}).start()
            try:
                ready = sock.recv(4096).decode()
                assert ready.startswith("READY=1")
                assert d.proc is not None
                d.proc.send_signal(15)
                assert sock.recv(4096).decode() == "STOPPING=1"
                assert d.terminate() == 0
            finally:
                d.kill()


def test_user_defined_kinds_from_kinds_file(tmp_path: Path) -> None:
    kinds = tmp_path / "kinds.toml"
    kinds.write_text('[kinds.soil_moisture]\ntype = "number"\nunits = ["%"]\nmin = 0\nmax = 100\n')
    with CollectorProcess(tmp_path / "t.db", "--kinds", str(kinds)) as d:
        token = d.add_device("soil-1")
        with connect(d, "soil-1", token) as c:
            ack = c.batch(
                1,
                [
                    ["bed-1", "soil_moisture", T0, 41.5, "%", None],
                    ["bed-2", "soil_moisture", T0, 140.0, "%", None],
                ],
            )
    assert isinstance(ack, wire.Ack) and ack.accepted == 1
    assert [(r.index, r.code) for r in ack.rejects] == [(1, "out_of_range")]


def test_http_read_token(tmp_path: Path) -> None:
    with CollectorProcess(tmp_path / "t.db", env={"TELEMETRY_HTTP_TOKEN": "s3cret"}) as d:
        assert http_get(d.http, "/api/v1/series")[0] == 401
        assert d.http is not None
        req = urllib.request.Request(
            f"http://{d.http[0]}:{d.http[1]}/api/v1/series",
            headers={"Authorization": "Bearer s3cret"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        assert http_get(d.http, "/healthz")[0] == 200  # health stays open for probes
