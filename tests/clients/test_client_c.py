"""The C client (clients/c): its unit tests, every language-neutral vector, and end-to-end
runs against a real `telemetry collector` subprocess.

The C code is built once per module with `make SANITIZE=1` (AddressSanitizer + UBSan) into
clients/c/build/asan; any memory error or undefined behaviour aborts the program and fails
the test. Vectors go through `vectorcheck` (commands on stdin, one answer per line); the
end-to-end tests drive `sendreadings`, a small program around one `tm_client` over POSIX
sockets, and the `counter` example. Everything talks to 127.0.0.1 only.

Needs a C compiler and make; without them the module skips with one line, and fails when
CI=true.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from schemas import wire
from tests.collector.wireclient import CollectorProcess, WireClient
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.harness import committed_total, stored, wait_for

ROOT = Path(__file__).resolve().parents[2]
CDIR = ROOT / "clients" / "c"
BUILD = CDIR / "build" / "asan"
VECTORS = ROOT / "tests" / "vectors"
TS0 = 1_700_000_000_000_000_000
SAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}
MISSING = [tool for tool in ("cc", "make") if shutil.which(tool) is None]
if MISSING:
    _WHY = f"C client tests need {' and '.join(MISSING)}: apt-get install gcc make"
    if os.environ.get("CI") == "true":
        pytest.fail(_WHY, pytrace=False)
    pytest.skip(_WHY, allow_module_level=True)


@pytest.fixture(scope="module")
def cbuild() -> Path:
    """The sanitized build of the library, its tests and examples."""
    out = subprocess.run(
        ["make", "-C", str(CDIR), "SANITIZE=1", "all"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return BUILD


def load(name: str) -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads((VECTORS / name).read_text("utf-8"))["vectors"]
    return vectors


# ------------------------------------------------------------------ the command format


class Unrepresentable(Exception):
    """A JSON value the C API cannot build (e.g. a float timestamp, a non-string tag)."""


def s_hex(s: object) -> str:
    if not isinstance(s, str):
        raise Unrepresentable(repr(s))
    return s.encode().hex() or "-"


def s_value(v: object, *, nested: bool = False) -> str:
    if v is None:
        return "n"
    if isinstance(v, bool):
        return "T" if v else "F"
    if isinstance(v, int):
        if -(2**63) <= v < 2**63:
            return f"i {v}"
        if 0 <= v < 2**64:
            return f"u {v}"
        raise Unrepresentable(repr(v))
    if isinstance(v, float):
        return "f " + struct.pack(">d", v).hex()
    if isinstance(v, str):
        return "s " + s_hex(v)
    if isinstance(v, dict) and not nested:
        items = " ".join(f"{s_hex(k)} {s_value(x, nested=True)}" for k, x in v.items())
        return f"m {len(v)} {items}".rstrip()
    raise Unrepresentable(repr(v))


def s_reading(r: object) -> str:
    if not isinstance(r, list) or len(r) != 6:
        raise Unrepresentable(repr(r))
    sensor, kind, ts, value, unit, tags = r
    if not isinstance(ts, int) or isinstance(ts, bool) or not -(2**63) <= ts < 2**63:
        raise Unrepresentable(repr(ts))
    unit_s = "n" if unit is None else "s " + s_hex(unit)
    if tags is None:
        tags_s = "n"
    elif isinstance(tags, dict):
        pairs = " ".join(f"{s_hex(k)} {s_hex(v)}" for k, v in tags.items())
        tags_s = f"m {len(tags)} {pairs}".rstrip()
    else:
        raise Unrepresentable(repr(tags))
    return f"R {s_hex(sensor)} {s_hex(kind)} {ts} {s_value(value)} {unit_s} {tags_s}"


def encode_command(message: dict[str, Any]) -> str | None:
    """The vectorcheck command that encodes an agent-sent message, or None."""
    f = message["fields"]
    match message["type"]:
        case "HELLO":
            stream = f" {s_hex(f['stream'])}" if "stream" in f else ""
            return (
                f"hello {s_hex(f['device_id'])} {s_hex(f['token'])} {s_hex(f['agent'])} "
                f"{s_hex(f['agent_version'])} {f['dropped']}{stream}"
            )
        case "BATCH":
            rs = " ".join(s_reading(r) for r in f["readings"])
            return f"batch {f['seq']} {len(f['readings'])} {rs}".rstrip()
        case "PING" | "PONG":
            return f"{message['type'].lower()} {f['nonce']}"
        case "BYE":
            return f"bye {s_hex(f['reason'])}"
        case "ERROR" if "seq" not in f:  # an ERROR naming a seq is the collector's
            return f"error {s_hex(f['code'])} {s_hex(f['message'])} {int(f['fatal'])}"
    return None


def vectorcheck(build: Path, commands: list[str]) -> list[str]:
    out = subprocess.run(
        [str(build / "vectorcheck")],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **SAN_ENV},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(commands), out.stderr
    return lines


# v1.1 fields (name, position in the message array, default) that v1.0 vectors do not list:
# the C decoder reports them, from the wire when the array is long enough (e.g. the 8th
# element of hello/extra-trailing-fields is a HELLO stream to a v1.1 receiver).
V11_FIELDS = {"HELLO": ("stream", 7, ""), "WELCOME": ("minor", 6, 0), "ERROR": ("seq", 4, 0)}


def expected_fields(message: dict[str, Any], frame_hex: str) -> dict[str, Any]:
    fields = dict(message["fields"])
    if message["type"] == "BATCH":
        fields = {"seq": fields["seq"], "count": len(fields["readings"])}
    if message["type"] in V11_FIELDS:
        name, pos, default = V11_FIELDS[message["type"]]
        array = msgpack.unpackb(bytes.fromhex(frame_hex)[4:])
        fields[name] = array[pos] if len(array) > pos else default
    return fields


# ------------------------------------------------------------------ vectors


def test_c_unit_tests(cbuild: Path) -> None:
    out = subprocess.run(
        [str(cbuild / "unit_tests")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **SAN_ENV},
    )
    assert out.returncode == 0, out.stderr
    assert "checks passed" in out.stdout


def test_valid_frames_encode_byte_exact_and_decode(cbuild: Path) -> None:
    vectors = load("frames_valid.json")
    commands: list[str] = []
    plan: list[tuple[str, str, dict[str, Any]]] = []
    for v in vectors:
        agent_sends = v["direction"] in ("agent->collector", "either")
        cmd = encode_command(v["message"]) if agent_sends and v["canonical"] else None
        if cmd is not None:
            commands.append(cmd)
            plan.append(("encode", v["name"], v))
        commands.append("decode " + v["hex"])
        plan.append(("decode", v["name"], v))
    answers = vectorcheck(cbuild, commands)
    wrong = []
    encoded: set[str] = set()
    decoded: set[str] = set()
    for (what, name, v), got in zip(plan, answers, strict=True):
        if what == "encode":
            encoded.add(v["message"]["type"])
            if got != v["hex"]:
                wrong.append(f"{name}: encoded {got}, want {v['hex']}")
        else:
            decoded.add(v["message"]["type"])
            msg = json.loads(got)
            want = {"type": v["message"]["type"], "fields": expected_fields(v["message"], v["hex"])}
            if msg != want:
                wrong.append(f"{name}: decoded {msg}, want {want}")
    assert wrong == []
    # every frame an agent sends is encoded, every frame a collector sends is decoded
    assert {"HELLO", "BATCH", "PING", "PONG", "BYE", "ERROR"} <= encoded
    assert {"WELCOME", "ACK", "RETRY", "ERROR", "PING", "PONG", "BYE"} <= decoded


def test_invalid_frames_give_the_reference_errors(cbuild: Path) -> None:
    vectors = load("frames_invalid.json")
    commands = []
    for v in vectors:
        for chunk in (1 << 20, 1):  # whole, then one byte at a time
            commands.append(
                f"feed {v['receiver']} {v['state']} {int(v['eof'])} {chunk} {v['hex'] or '-'}"
            )
    answers = iter(vectorcheck(cbuild, commands))
    wrong = []
    for v in vectors:
        # A step's `seq` is the BATCH seq a collector names in its ERROR reply (v1.1): the
        # collector's reply behaviour, which an agent-side decoder does not need.
        expect = [{k: x for k, x in step.items() if k != "seq"} for step in v["expect"]]
        for how in ("whole", "bytewise"):
            got = json.loads(next(answers))
            if got != expect:
                wrong.append(f"{v['name']} ({how}): {got}, want {expect}")
    assert wrong == []


def test_readings_encode_byte_exact(cbuild: Path) -> None:
    vectors = load("readings.json")
    commands, names, hexes, skipped = [], [], [], set()
    for v in vectors:
        try:
            commands.append("reading " + s_reading(v["reading"]))
        except Unrepresentable:
            skipped.add(v["name"])
            continue
        names.append(v["name"])
        hexes.append(v["hex"])
    answers = vectorcheck(cbuild, commands)
    wrong = [f"{n}: {g} != {h}" for n, g, h in zip(names, answers, hexes, strict=True) if g != h]
    assert wrong == []
    # Not expressible through tm_reading: readings JSON cannot hold (NaN, inf, Timestamp
    # ext), a float ts, a non-string tag value, and arrays that are not readings.
    unbuildable = {"ts/float", "tags/value-not-string", "shape/five-elements", "shape/map"}
    assert skipped == unbuildable | {v["name"] for v in vectors if v["reading"] is None}


def test_v11_fields(cbuild: Path) -> None:
    stream = "0123456789abcdef0123456789abcdef"
    hello = msgpack.packb([1, 1, "dev", "tok", "telemetry-c", "0.1.0", 3, stream])
    welcome = msgpack.packb([2, 1, 5, 65536, 500, 5000, 1])
    error = msgpack.packb([8, "session_replaced", "newer session", True, 7])
    error_v10 = msgpack.packb([8, "bad_message", "no seq", False])

    def frame(body: bytes) -> str:
        return (struct.pack(">I", len(body)) + body).hex()

    cmd = f"hello {s_hex('dev')} {s_hex('tok')} {s_hex('telemetry-c')} {s_hex('0.1.0')} 3 "
    answers = vectorcheck(
        cbuild,
        [
            cmd + s_hex(stream),
            f"decode {frame(welcome)}",
            f"decode {frame(error)}",
            f"decode {frame(error_v10)}",
            f"decode {frame(hello)}",
        ],
    )
    assert answers[0] == frame(hello)
    assert json.loads(answers[1])["fields"]["minor"] == 1
    assert json.loads(answers[2])["fields"] == {
        "code": "session_replaced",
        "message": "newer session",
        "fatal": True,
        "seq": 7,
    }
    assert json.loads(answers[3])["fields"]["seq"] == 0
    assert json.loads(answers[4])["fields"]["stream"] == stream


# ------------------------------------------------------------------ end to end


class CClient:
    """`sendreadings` as a subprocess: one command at a time, answers read with deadlines."""

    def __init__(self, build: Path, address: str, device: str, token: str, **env: str) -> None:
        self.proc = subprocess.Popen(
            [str(build / "sendreadings")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                **SAN_ENV,
                "TELEMETRY_ADDRESS": address,
                "TELEMETRY_DEVICE": device,
                "TELEMETRY_TOKEN": token,
                **env,
            },
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._threads = [
            threading.Thread(target=self._pump_out, daemon=True),
            threading.Thread(target=self._pump_err, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def write(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        """Events up to the next command's `done` line, which is returned."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no answer in {timeout} s:\n{''.join(self.stderr)}") from None
            assert line is not None, "sendreadings exited:\n" + "".join(self.stderr)
            item: dict[str, Any] = json.loads(line)
            if "done" in item:
                return item
            self.events.append(item)

    def cmd(self, line: str, timeout: float = 60.0) -> dict[str, Any]:
        self.write(line)
        return self.result(timeout)

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        rc = self.proc.wait(30)
        for t in self._threads:
            t.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return rc


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[CollectorProcess]:
    with CollectorProcess(tmp_path / "t.db") as d:
        yield d


def address(d: CollectorProcess) -> str:
    host, port = d.ingest
    return f"{host}:{port}"


FMT = ("--format", "json")


def query_json(db: Path, device: str) -> list[dict[str, Any]]:
    """`telemetry query --format json` for one device."""
    out = subprocess.run(
        [sys.executable, "-m", "collector", "query", "--db", str(db), "--device", device, *FMT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def test_counter_example_stores_every_reading_once(cbuild: Path, daemon: CollectorProcess) -> None:
    token = daemon.add_device("c-counter")
    n = 2000
    env = {
        **os.environ,
        **SAN_ENV,
        "TELEMETRY_ADDRESS": address(daemon),
        "TELEMETRY_DEVICE": "c-counter",
        "TELEMETRY_TOKEN": token,
        "TELEMETRY_COUNT": str(n),
    }
    before = time.time_ns()
    out = subprocess.run(
        [str(cbuild / "counter")], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"sent {n} readings: {n} accepted, 0 duplicate, 0 rejected\n"
    rows = query_json(daemon.db, "c-counter")
    assert [r["value"] for r in rows] == list(range(1, n + 1))
    assert {(r["sensor"], r["kind"]) for r in rows} == {("example/counter", "counter")}
    ts = [r["ts_ns"] for r in rows]
    assert before <= ts[0] <= time.time_ns()
    assert {b - a for a, b in itertools.pairwise(ts)} == {1_000_000}
    assert stored(daemon.db, "c-counter").ints(("c-counter", "example/counter")) == list(
        range(1, n + 1)
    )


def test_counter_example_auth_failure_exits_nonzero(cbuild: Path, daemon: CollectorProcess) -> None:
    daemon.add_device("c-auth")
    env = {
        **os.environ,
        **SAN_ENV,
        "TELEMETRY_ADDRESS": address(daemon),
        "TELEMETRY_DEVICE": "c-auth",
        "TELEMETRY_TOKEN": "wrong-token",
        "TELEMETRY_COUNT": "5",
    }
    out = subprocess.run(
        [str(cbuild / "counter")], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 1
    assert out.stdout == ""
    assert len(out.stderr.splitlines()) == 1
    assert "auth_failed" in out.stderr


# Valid and invalid readings of several kinds; the C client must get exactly the rejects
# (index, code, path, message) the Python wire client gets for the same batch.
PARITY: list[list[object]] = [
    ["room/temp", "temperature", TS0, 21.5, "C", None],
    ["room/humidity", "humidity", TS0, 104.0, "%", None],
    ["room/smell", "smell", TS0, 1.0, None, None],
    ["truck/gps", "gps", TS0, {"lat": 91.0, "lon": 0.0}, None, None],
    ["truck/gps", "gps", TS0 + 1, {"lat": 48.137154, "lon": 11.576124}, None, {"fleet": "n"}],
    ["pump/strokes", "counter", TS0, -1, None, None],
    ["pump/strokes", "counter", TS0 + 1, 2.0, None, None],
    ["door/front", "state", TS0, True, None, None],
    ["bad sensor", "gauge", TS0, 1.0, None, None],
    ["log/door", "event", TS0, "opened by badge 17", None, None],
    ["rack/temp", "temperature", TS0, -300.0, "C", None],
    ["s/tags", "gauge", TS0, 1.0, "rpm", {"bad key!": "x"}],
    ["imu/accel", "acceleration", TS0, {"x": 0.01, "y": -0.02, "z": 9.81}, "m/s2", None],
]
VALID_PARITY = 5


def test_rejects_match_the_python_client_and_resend_is_duplicate(
    cbuild: Path, daemon: CollectorProcess
) -> None:
    py_token = daemon.add_device("py-dev")
    with WireClient(*daemon.ingest) as py:
        assert isinstance(py.hello("py-dev", py_token), wire.Welcome)
        py_ack = py.batch(1, list(PARITY))
    assert isinstance(py_ack, wire.Ack)
    py_rejects = [(r.index, r.code, r.path, r.message) for r in py_ack.rejects]
    assert ("out_of_range", "value") in [(c, p) for _, c, p, _ in py_rejects]
    assert ("unknown_kind", "kind") in [(c, p) for _, c, p, _ in py_rejects]

    c = CClient(cbuild, address(daemon), "c-dev", daemon.add_device("c-dev"))
    try:
        for r in PARITY:
            assert c.cmd("add " + s_reading(r))["rc"] == 0
        first = c.cmd("flush 30000")
        assert first["rc"] == 0, c.stderr
        acks = [e["ack"] for e in c.events if "ack" in e]
        rejects = [e["reject"] for e in c.events if "reject" in e]
        assert len(acks) == 1
        assert (acks[0]["accepted"], acks[0]["duplicate"]) == (py_ack.accepted, py_ack.duplicate)
        assert acks[0]["accepted"] == VALID_PARITY
        got = [(r["index"], r["code"], r["path"], r["message"]) for r in rejects]
        assert got == py_rejects
        # reading ids are the ones `add` returned: 1.. in order
        assert [r["id"] for r in rejects] == [i + 1 for i, *_ in py_rejects]

        # The same readings again: nothing new is stored, the valid ones come back duplicate.
        c.events.clear()
        for r in PARITY:
            assert c.cmd("add " + s_reading(r))["rc"] == 0
        second = c.cmd("flush 30000")
        assert second["rc"] == 0, c.stderr
        acks = [e["ack"] for e in c.events if "ack" in e]
        assert [(a["accepted"], a["duplicate"]) for a in acks] == [(0, VALID_PARITY)]
        again = [
            (e["reject"]["index"], e["reject"]["code"], e["reject"]["path"])
            for e in c.events
            if "reject" in e
        ]
        assert again == [(i, code, path) for i, code, path, _ in py_rejects]
        assert second["stats"]["dropped"] == 0
    finally:
        assert c.close() == 0, "".join(c.stderr)

    # What the C client stored is exactly what the Python client stored.
    def rows(device: str) -> list[tuple[object, ...]]:
        return [
            (r["sensor"], r["kind"], r["ts_ns"], r["field"], r["value"], r["unit"], r["tags"])
            for r in query_json(daemon.db, device)
        ]

    c_rows = rows("c-dev")
    assert c_rows == rows("py-dev")
    assert len({(s, ts) for s, _, ts, *_ in c_rows}) == VALID_PARITY


def test_reconnect_resumes_through_drops_and_a_collector_restart(
    cbuild: Path, tmp_path: Path
) -> None:
    db = tmp_path / "t.db"
    # a per-device rate limit makes the collector answer RETRY along the way
    args = ("--max-readings-per-s-per-device", "1000")
    first = CollectorProcess(db, *args).start()
    second: CollectorProcess | None = None
    proxy = FaultProxy("127.0.0.1", first.ingest[1]).start()
    n = 6000
    c = CClient(
        cbuild,
        f"127.0.0.1:{proxy.port}",
        "c-dev",
        first.add_device("c-dev"),
        TELEMETRY_HEARTBEAT_MS="500",
        TELEMETRY_BACKOFF_MAX_MS="300",
    )
    try:
        assert c.cmd(f"counter {s_hex('c/counter')} {TS0} {n}")["rc"] == 0
        c.write("flush 120000")
        wait_for(lambda: committed_total(db) >= n // 6, "first readings committed", 60)
        proxy.drop_all()  # both sides see the connection end
        wait_for(lambda: committed_total(db) >= n // 2, "readings after the drop", 60)
        first.kill()  # SIGKILL: whatever was not committed was not ACKed
        second = CollectorProcess(db, *args).start()
        proxy.upstream_port = second.ingest[1]
        done = c.result(120)
        assert done["rc"] == 0, "".join(c.stderr)
        stats = done["stats"]
        assert done["pending"] == 0
        assert stats["accepted"] + stats["duplicate"] == n
        assert (stats["rejected"], stats["dropped"]) == (0, 0)
        assert stats["disconnects"] >= 2
        assert stats["connects"] >= 3
        assert stats["retries"] >= 1
    finally:
        assert c.close() == 0, "".join(c.stderr)
        proxy.stop()
        for d in (first, second):
            if d is not None:
                d.kill()
    # every reading stored exactly once, in order
    assert stored(db, "c-dev").ints(("c-dev", "c/counter")) == list(range(1, n + 1))


def test_run_example_works_as_the_readme_says(
    cbuild: Path, daemon: CollectorProcess, tmp_path: Path
) -> None:
    # The README's quick start, with the collector's real port.
    readme = (CDIR / "README.md").read_text("utf-8")
    assert "clients/c/run-example" in readme
    assert "telemetry devices add" in readme
    token = daemon.add_device("c-demo")
    env = {
        **os.environ,
        "TELEMETRY_ADDRESS": address(daemon),
        "TELEMETRY_DEVICE": "c-demo",
        "TELEMETRY_TOKEN": token,
    }
    out = subprocess.run(
        ["clients/c/run-example"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout.splitlines()[-1] == "sent 1000 readings: 1000 accepted, 0 duplicate, 0 rejected"
    )
    assert len(query_json(daemon.db, "c-demo")) == 1000
