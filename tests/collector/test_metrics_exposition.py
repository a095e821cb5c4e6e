"""/metrics read by a real Prometheus text parser (prometheus-client's).

One metric family per meaning: a family holds either the collector-wide value or per-device
series, never both, so `sum(family)` in PromQL counts every reading once. Checked on the
renderer with many devices and on a real collector subprocess after real batches.
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from collector.storage.sqlite.storagestats import StorageStats
from collector.web.metrics import Metrics
from schemas import wire
from tests.collector.wireclient import CollectorProcess, WireClient

NS = 1_000_000_000
T0 = 1_750_000_000 * NS
PER_DEVICE = ("accepted", "rejected", "duplicate")


def _families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    seen: list[str] = []
    for fam in text_string_to_metric_families(text):
        seen.append(fam.name)
        out[fam.name] = [(dict(s.labels), float(s.value)) for s in fam.samples]
    assert len(seen) == len(set(seen)), f"families declared twice: {sorted(seen)}"
    return out


def _check_one_meaning_per_family(fams: dict[str, list[tuple[dict[str, str], float]]]) -> None:
    for name, samples in fams.items():
        with_device = {("device" in labels) for labels, _ in samples}
        assert len(with_device) <= 1, f"{name} mixes a total with per-device series"


def _sample(fams: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    (only,) = [v for labels, v in fams[name] if not labels]
    return only


def _per_device(fams: dict[str, list[tuple[dict[str, str], float]]], name: str) -> dict[str, float]:
    return {labels["device"]: v for labels, v in fams[name]}


def test_rendered_families_have_one_meaning_each_and_sums_match() -> None:
    m = Metrics()
    per: dict[str, dict[str, int]] = defaultdict(dict)
    for i in range(50):
        name = f"dev-{i}"
        s = m.device(name)
        s.accepted, s.rejected, s.duplicate, s.bytes_in = 10 + i, i % 3, i % 5, 1000 + i
        s.connected = 1
        for what in PER_DEVICE:
            per[what][name] = getattr(s, what)
        per["bytes_in"][name] = s.bytes_in
    m.accepted = sum(per["accepted"].values())
    m.rejected = sum(per["rejected"].values())
    m.duplicate = sum(per["duplicate"].values())
    m.bytes_in = sum(per["bytes_in"].values())
    m.connections_open = 50
    m.refused("auth_failed")
    m.commit_seconds.observe(0.002)
    storage = StorageStats(10, T0, 3, 1, 4096, 0, 0)
    fams = _families(m.render(storage))
    _check_one_meaning_per_family(fams)
    for what in PER_DEVICE:
        total = _sample(fams, f"telemetry_readings_{what}")
        devices = _per_device(fams, f"telemetry_device_readings_{what}")
        assert devices == {d: float(v) for d, v in per[what].items()}
        assert sum(devices.values()) == total == getattr(m, what)
    bytes_dev = _per_device(fams, "telemetry_device_bytes_in")
    assert sum(bytes_dev.values()) == _sample(fams, "telemetry_bytes_in") == m.bytes_in
    assert _sample(fams, "telemetry_connections_open") == 50
    assert sum(_per_device(fams, "telemetry_device_connected").values()) == 50


def test_a_real_collectors_metrics_parse_and_do_not_double_count(tmp_path: Path) -> None:
    with CollectorProcess(tmp_path / "t.db") as daemon:
        sent = {"m-1": 4, "m-2": 7}
        for name, n in sent.items():
            token = daemon.add_device(name)
            with WireClient(*daemon.ingest) as c:
                assert isinstance(c.hello(name, token), wire.Welcome)
                batch: list[object] = [
                    ["s", "temperature", T0 + i, 20.0, "C", None] for i in range(n)
                ]
                batch.append(["h", "humidity", T0, -1.0, None, None])  # rejected
                ack = c.batch(1, batch)
                assert isinstance(ack, wire.Ack) and ack.accepted == n
        assert daemon.http is not None
        host, port = daemon.http
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
            assert resp.status == 200
            text = resp.read().decode()
    fams = _families(text)
    _check_one_meaning_per_family(fams)
    accepted = _per_device(fams, "telemetry_device_readings_accepted")
    assert accepted == {"m-1": 4.0, "m-2": 7.0}
    assert _sample(fams, "telemetry_readings_accepted") == 11.0
    assert sum(_per_device(fams, "telemetry_device_readings_rejected").values()) == 2.0
    assert _sample(fams, "telemetry_readings_rejected") == 2.0
    # The foreign inputs' counters are part of the same scrape (collector/inputs/).
    assert _sample(fams, "telemetry_input_influx_requests") == 0.0
    assert "telemetry_sessions_replaced" in fams
    # The collector-wide count also has the bytes before a device named itself (HELLO).
    assert (
        0
        < sum(_per_device(fams, "telemetry_device_bytes_in").values())
        < _sample(fams, "telemetry_bytes_in")
    )
