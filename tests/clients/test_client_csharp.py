"""The C# client (clients/csharp) against the test vectors and a real collector subprocess.

The client, its test program and the Counter example are compiled with Mono's `mcs`
(warnings are errors) into a temporary directory and run with `mono`:

- every vector of tests/vectors: byte-exact encoding of what an agent sends, decoding of what
  a collector sends, and the ERROR verdict for every invalid frame;
- end to end against `telemetry collector` on 127.0.0.1 port 0 with a device registered by
  `telemetry devices add`: valid readings are stored exactly once; invalid readings get the
  same reject codes, paths and messages as the same readings sent from Python; the same
  readings sent again are ACKed as duplicates; a batch whose ACK was lost is resent from the
  file-backed queue with its seq and stream id and ACKed as a duplicate; a link cut mid-stream
  (tests/reliability/faultproxy.py) is survived with every reading stored once; auth_failed is
  a fatal error; and clients/csharp/run-example works as its README says.

Needs `mcs` and `mono` (Debian: mono-mcs mono-runtime); skipped without them unless CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from collector import certs
from schemas import wire
from tests.collector.wireclient import CollectorProcess, WireClient
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.harness import assert_exactly_once, stored, wait_for

ROOT = Path(__file__).resolve().parents[2]
CSHARP = ROOT / "clients" / "csharp"
VECTORS = ROOT / "tests" / "vectors"
TS0 = 1_700_000_000_000_000_000
SUMMARY = re.compile(r"^sent (\d+) readings: (\d+) accepted, (\d+) duplicate, (\d+) rejected$")


_MISSING = [t for t in ("mcs", "mono") if shutil.which(t) is None]
if _MISSING:
    _WHY = f"needs {' and '.join(_MISSING)}: apt-get install mono-mcs mono-runtime"
    if os.environ.get("CI") == "true":
        pytest.fail(_WHY, pytrace=False)
    pytest.skip(_WHY, allow_module_level=True)


def _mcs(*args: str) -> None:
    res = subprocess.run(
        ["mcs", "-nologo", "-warnaserror", *args], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library, the test program and the example, compiled with no warnings."""
    out = tmp_path_factory.mktemp("csharp")
    lib = out / "SensorTelemetry.Client.dll"
    _mcs("-target:library", f"-out:{lib}", *map(str, sorted((CSHARP / "src").glob("*.cs"))))
    tests = sorted((CSHARP / "tests").glob("*.cs"))
    _mcs(f"-r:{lib}", f"-out:{out / 'ClientTests.exe'}", *map(str, tests))
    _mcs(f"-r:{lib}", f"-out:{out / 'Counter.exe'}", str(CSHARP / "examples" / "Counter.cs"))
    return out


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory, build: Path) -> Iterator[CollectorProcess]:
    db = tmp_path_factory.mktemp("collector") / "telemetry.db"
    with CollectorProcess(db) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def tokens(collector: CollectorProcess) -> dict[str, str]:
    """Every device of the tests below, registered with `telemetry devices add` up front
    (before any readings arrive, so registration never waits behind compaction)."""
    names = ["cs-readings", "py-readings", "cs-resend", "cs-cut", "cs-auth", "cs-example"]
    return {name: collector.add_device(name) for name in names}


@pytest.fixture(scope="module")
def strict_collector(
    tmp_path_factory: pytest.TempPathFactory, build: Path
) -> Iterator[CollectorProcess]:
    """A collector that pings after 200 ms of silence, drops a link idle for 1 s and
    answers RETRY rate_limited above 1000 readings/s per device (a 2 s burst)."""
    db = tmp_path_factory.mktemp("strict") / "telemetry.db"
    args = ["--heartbeat-ms", "200", "--idle-timeout-s", "1"]
    with CollectorProcess(db, *args, "--max-readings-per-s-per-device", "1000") as daemon:
        yield daemon


def _env(port: int, device: str, token: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "TELEMETRY_ADDRESS": f"127.0.0.1:{port}",
        "TELEMETRY_DEVICE": device,
        "TELEMETRY_TOKEN": token,
        **extra,
    }


def _send(
    build: Path, tmp_path: Path, port: int, device: str, token: str, spec: Mapping[str, object]
) -> tuple[int, list[dict[str, Any]]]:
    """Run `ClientTests.exe send`; returns its exit code and its JSON output lines."""
    path = tmp_path / f"spec-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    res = subprocess.run(
        ["mono", str(build / "ClientTests.exe"), "send", str(path)],
        capture_output=True,
        text=True,
        timeout=90,
        env=_env(port, device, token),
    )
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    return res.returncode, lines


def _batches(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line["event"] == "batch"]


# Readings as tests/vectors writes them: a JSON int goes out through AddInteger, a JSON float
# through AddNumber, a bool through AddBool, a str through AddText, an object through AddObject.
VALID: list[list[object]] = [
    ["room/temp", "temperature", TS0, 21.5, "C", None],
    ["room/temp", "temperature", TS0 + 1, 22.0, None, {"site": "lab", "rack.pos": "3"}],
    ["pump/strokes", "counter", TS0, 123456789, None, None],
    ["door/front", "state", TS0, True, None, None],
    ["log/door", "event", TS0, "opened by badge 17", None, None],
    ["truck/gps", "gps", TS0, {"lat": 48.137154, "lon": 11.576124, "alt": 519.0}, None, None],
    ["imu/accel", "acceleration", TS0, {"x": 0.01, "y": -0.02, "z": 9.81}, "m/s2", None],
    ["rack/volts", "voltage", TS0, 3300, "mV", None],
]
INVALID: list[tuple[list[object], str, str]] = [
    (["room/humidity", "humidity", TS0, 104.0, "%", None], "out_of_range", "value"),
    (["room/smell", "smell", TS0, 1.0, None, None], "unknown_kind", "kind"),
    (["room/temp2", "temperature", TS0, 20.0, "degC", None], "bad_unit", "unit"),
    (["pump/strokes2", "counter", TS0, 2.0, None, None], "wrong_type", "value"),
    (["my sensor", "gauge", TS0, 1.0, None, None], "bad_sensor", "sensor"),
    (
        ["truck/gps2", "gps", TS0, {"lat": 91.0, "lon": 0.0}, None, None],
        "out_of_range",
        "value.lat",
    ),
    (["truck/gps3", "gps", TS0, {"lat": 1.0}, None, None], "missing_field", "value.lon"),
    (["s/neg", "gauge", -1, 1.0, None, None], "bad_timestamp", "ts"),
]


def test_every_vector_passes(build: Path) -> None:
    res = subprocess.run(
        ["mono", str(build / "ClientTests.exe"), "vectors", str(VECTORS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(r"vectors: (\d+) checks, 0 failed, (\d+) not expressible", res.stdout)
    assert m, res.stdout
    # Every vector is decoded; only readings the typed API cannot express (NaN from JSON,
    # a ts beyond int64, a non-string tag value, not 6 fields) skip the encoding check.
    assert int(m.group(1)) >= 250 and int(m.group(2)) <= 12, res.stdout


def test_readings_stored_once_and_rejected_like_python(
    build: Path, collector: CollectorProcess, tokens: dict[str, str], tmp_path: Path
) -> None:
    port = collector.ingest[1]
    cs_token, py_token = tokens["cs-readings"], tokens["py-readings"]
    readings = [
        *VALID[:4],
        *(r for r, _, _ in INVALID[:4]),
        *VALID[4:],
        *(r for r, _, _ in INVALID[4:]),
    ]

    rc, lines = _send(build, tmp_path, port, "cs-readings", cs_token, {"batches": [readings]})
    assert rc == 0, lines
    (result,) = _batches(lines)
    assert result["outcome"] == "Acknowledged"
    assert (result["accepted"], result["duplicate"]) == (len(VALID), 0)
    rejects: list[list[object]] = result["rejects"]
    got = [tuple(r[:4]) for r in rejects]

    # The same readings from Python's own wire codec, as another device.
    with WireClient("127.0.0.1", port) as c:
        assert isinstance(c.hello("py-readings", py_token), wire.Welcome)
        ack = c.batch(1, list(readings))
    assert isinstance(ack, wire.Ack)
    want = [(r.index, r.code, r.path, r.message) for r in ack.rejects]
    assert got == want
    assert sorted((i, code, path) for i, code, path, _ in want) == sorted(
        (readings.index(r), code, path) for r, code, path in INVALID
    )
    # Each reject names its reading, so the caller can tell which one failed.
    assert [r[4] for r in rejects] == [readings[i][0] for i, _, _, _ in want]

    cs = stored(collector.db, "cs-readings")
    py = stored(collector.db, "py-readings")
    assert {k[1]: v for k, v in cs.values.items()} == {k[1]: v for k, v in py.values.items()}
    assert cs.head_rows + cs.block_rows == py.head_rows + py.block_rows >= len(VALID)

    # The same readings again, from a new client instance: nothing new is stored, every valid
    # reading is ACKed as a duplicate and the rejects are the same.
    rc, lines = _send(build, tmp_path, port, "cs-readings", cs_token, {"batches": [readings]})
    assert rc == 0, lines
    (again,) = _batches(lines)
    assert (again["accepted"], again["duplicate"]) == (0, len(VALID))
    assert again["rejects"] == result["rejects"]
    after = stored(collector.db, "cs-readings")
    assert (
        after.values == cs.values
        and after.head_rows + after.block_rows == cs.head_rows + cs.block_rows
    )
    # An in-memory queue means a new stream id per client instance (protocol v1.1).
    streams = {line["stream"] for line in lines if line["event"] == "done"}
    assert len(streams) == 1 and re.fullmatch(r"[0-9a-f]{32}", streams.pop())


def test_lost_ack_is_resent_from_the_file_queue_and_acked_as_duplicate(
    build: Path, collector: CollectorProcess, tokens: dict[str, str], tmp_path: Path
) -> None:
    token = tokens["cs-resend"]
    queue = tmp_path / "queue"
    readings = [["resend/n", "counter", TS0 + i, i + 1, None, None] for i in range(50)]
    # Every chunk waits 2 s in the proxy, so the ACK is still held there when the program
    # stops: the collector has committed the batch, the client never hears of it.
    proxy = FaultProxy("127.0.0.1", collector.ingest[1], mode="delay", delay_s=2.0).start()
    try:
        spec = json.dumps({"batches": [readings], "queue_dir": str(queue), "hold": True})
        (tmp_path / "hold.json").write_text(spec)
        proc = subprocess.Popen(
            ["mono", str(build / "ClientTests.exe"), "send", str(tmp_path / "hold.json")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(proxy.port, "cs-resend", token),
        )
        assert proc.stdout is not None and proc.stdin is not None
        sent = json.loads(proc.stdout.readline())
        assert sent["event"] == "sent", sent
        wait_for(lambda: stored(collector.db, "cs-resend").total == 50, "the batch to commit", 20)
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert not _batches([json.loads(x) for x in out.splitlines() if x.strip()]), out
    finally:
        proxy.stop()
    assert list(queue.glob("*.batch")), "the unacknowledged batch stays in the queue"

    rc, lines = _send(
        build,
        tmp_path,
        collector.ingest[1],
        "cs-resend",
        token,
        {"batches": [], "queue_dir": str(queue)},
    )
    assert rc == 0, lines
    (result,) = _batches(lines)
    assert result["seq"] == sent["seq"] >= 1
    assert (result["count"], result["accepted"], result["duplicate"]) == (50, 0, 50)
    (done,) = (x for x in lines if x["event"] == "done")
    assert done["stream"] == sent["stream"], "the stream id is kept with the queue"
    assert not list(queue.glob("*.batch"))
    assert_exactly_once(stored(collector.db, "cs-resend"), {("cs-resend", "resend/n"): 50})


def test_counter_survives_a_cut_link_and_stores_everything_once(
    build: Path, collector: CollectorProcess, tokens: dict[str, str]
) -> None:
    token = tokens["cs-cut"]
    count = 20_000
    # Cut every connection after 30 kB from the client (inside its first batch) until the
    # test sees a cut, then let traffic pass: the client must reconnect and resend.
    proxy = FaultProxy("127.0.0.1", collector.ingest[1], mode="cut", cut_after=30_000).start()
    try:
        proc = subprocess.Popen(
            ["mono", str(build / "Counter.exe")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(proxy.port, "cs-cut", token, TELEMETRY_COUNT=str(count)),
        )
        wait_for(lambda: proxy.stats.cuts >= 1 or proc.poll() is not None, "a cut", 30)
        proxy.set_mode("pass")
        out, err = proc.communicate(timeout=60)
    finally:
        proxy.stop()
    assert proc.returncode == 0, err
    m = SUMMARY.match(out.strip())
    assert m, out
    sent, accepted, duplicate, rejected = map(int, m.groups())
    assert sent == count and accepted + duplicate == count and rejected == 0
    assert proxy.stats.cuts >= 1 and proxy.stats.connections >= 2
    assert_exactly_once(stored(collector.db, "cs-cut"), {("cs-cut", "example/counter"): count})


def _counter_batches(first: int, batches: int, size: int) -> list[list[list[object]]]:
    return [
        [["n/c", "counter", TS0 + v, v, None, None] for v in range(b, b + size)]
        for b in range(first, first + batches * size, size)
    ]


def test_retry_is_followed_and_a_quiet_link_stays_up(
    build: Path, strict_collector: CollectorProcess, tmp_path: Path
) -> None:
    token = strict_collector.add_device("cs-strict")
    spec = {
        "batches": _counter_batches(1, 3, 1000),  # the third is over the 2000-reading burst
        "pause_ms": 1500,  # idle longer than the 1 s idle timeout: only heartbeats keep it up
        "after": _counter_batches(3001, 1, 1000),
    }
    rc, lines = _send(build, tmp_path, strict_collector.ingest[1], "cs-strict", token, spec)
    assert rc == 0, lines
    results = _batches(lines)
    assert [(r["outcome"], r["accepted"]) for r in results] == [("Acknowledged", 1000)] * 4
    (done,) = (x for x in lines if x["event"] == "done")
    assert done["retries"] >= 1, "the collector's RETRY rate_limited was waited out"
    assert done["reconnects"] == 0, "PING/PONG kept the idle link alive"
    assert_exactly_once(stored(strict_collector.db, "cs-strict"), {("cs-strict", "n/c"): 4000})


def test_tls_with_a_pinned_certificate(build: Path, tmp_path: Path) -> None:
    good, other = tmp_path / "good", tmp_path / "other"
    for d in (good, other):
        d.mkdir()
        certs.create_ca(d)
        certs.issue(d, "collector", server=True, hosts=("127.0.0.1", "localhost"))
    tls = ["--tls-cert", str(good / "collector.pem"), "--tls-key", str(good / "collector.key")]
    with CollectorProcess(tmp_path / "tls.db", *tls) as daemon:
        token = daemon.add_device("cs-tls")
        port = daemon.ingest[1]
        spec: dict[str, object] = {
            "batches": [VALID[:3]],
            "tls_pinned": str(good / "collector.pem"),
        }
        rc, lines = _send(build, tmp_path, port, "cs-tls", token, spec)
        assert rc == 0, lines
        assert [r["accepted"] for r in _batches(lines)] == [3]
        assert stored(daemon.db, "cs-tls").total == 3

        # A server certificate other than the pinned one: no session, nothing sent.
        spec = {**spec, "tls_pinned": str(other / "collector.pem"), "connect_s": 2}
        rc, lines = _send(build, tmp_path, port, "cs-tls", token, spec)
        assert rc == 4 and lines[-1]["event"] == "timeout", lines
        assert stored(daemon.db, "cs-tls").total == 3


def test_batches_are_split_to_the_collectors_frame_limit(build: Path, tmp_path: Path) -> None:
    with CollectorProcess(tmp_path / "small.db", "--max-frame-bytes", "4096") as daemon:
        token = daemon.add_device("cs-small")
        # 300 readings are ~10 kB: over the 4096-byte frames WELCOME announces.
        spec = {"batches": _counter_batches(1, 1, 300)}
        rc, lines = _send(build, tmp_path, daemon.ingest[1], "cs-small", token, spec)
        assert rc == 0, lines
        parts = _batches(lines)
        assert len(parts) >= 2 and sum(p["count"] for p in parts) == 300
        assert all(p["outcome"] == "Acknowledged" for p in parts)
        (whole,) = (x for x in lines if x["event"] == "result")
        assert (whole["count"], whole["accepted"], whole["duplicate"]) == (300, 300, 0)
        assert_exactly_once(stored(daemon.db, "cs-small"), {("cs-small", "n/c"): 300})


def test_units_without_a_collector(build: Path, tmp_path: Path) -> None:
    res = subprocess.run(
        ["mono", str(build / "ClientTests.exe"), "units", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"units: (\d+) checks, 0 failed", res.stdout), res.stdout


def test_auth_failed_is_fatal(
    build: Path, collector: CollectorProcess, tokens: dict[str, str], tmp_path: Path
) -> None:
    assert tokens["cs-auth"]
    rc, lines = _send(
        build,
        tmp_path,
        collector.ingest[1],
        "cs-auth",
        "wrong-token",
        {"batches": [VALID[:1]]},
    )
    assert rc == 3
    assert lines[-1]["event"] == "fatal" and lines[-1]["type"] == "AuthenticationFailedException"


def test_run_example_works_as_documented(
    build: Path, collector: CollectorProcess, tokens: dict[str, str], tmp_path: Path
) -> None:
    token = tokens["cs-example"]
    script = CSHARP / "run-example"
    assert os.access(script, os.X_OK)
    env = _env(
        collector.ingest[1],
        "cs-example",
        token,
        TELEMETRY_COUNT="1000",
        TELEMETRY_CS_BUILD=str(tmp_path / "build"),
    )
    res = subprocess.run([str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "sent 1000 readings: 1000 accepted, 0 duplicate, 0 rejected\n"
    assert_exactly_once(
        stored(collector.db, "cs-example"), {("cs-example", "example/counter"): 1000}
    )

    bad = {**env, "TELEMETRY_TOKEN": "wrong-token"}
    res = subprocess.run([str(script)], capture_output=True, text=True, timeout=120, env=bad)
    assert res.returncode != 0 and res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and "auth" in res.stderr, res.stderr
