"""Each source against fixture files, fixture commands and a fake psutil."""

from __future__ import annotations

import asyncio
import sys
import time
import types
from collections import namedtuple
from pathlib import Path

import pytest

from agents.config import AgentConfigError, InputConfig
from agents.sources import SourceContext, SourceError, build, source_names
from agents.sources.simulated import SimulatedSource
from schemas.readings import ReadingValidator
from schemas.wire import Reading

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "agent"
EMIT = str(FIXTURES / "bin" / "emit.py")
CTX = SourceContext(clock_ns=lambda: 1_700_000_000_000_000_000, root=FIXTURES)


def _inp(source: str, **kw: object) -> InputConfig:
    common = {k: kw.pop(k) for k in ("name", "names", "kind", "unit", "tags") if k in kw}
    interval = float(kw.pop("interval", 1.0))  # type: ignore[arg-type]
    return InputConfig(source, 0, interval_s=interval, options=kw, **common)  # type: ignore[arg-type]


def _read(src) -> list[Reading]:
    return asyncio.run(src.read())


def test_registry_knows_the_builtin_sources():
    assert {"file", "command", "simulated", "system"} <= source_names()


def test_unknown_source_and_bad_option_name_the_table_and_key():
    with pytest.raises(AgentConfigError, match=r"inputs\.nosuch"):
        build(_inp("nosuch"))
    with pytest.raises(AgentConfigError, match=r"inputs\.file\[0\], key 'colour'"):
        build(_inp("file", path="/x", colour="red"), CTX)
    with pytest.raises(AgentConfigError, match=r"key 'path': required"):
        build(_inp("file"), CTX)


# ---------------------------------------------------------------- file


def test_file_reads_a_sysfs_temperature_with_scale_under_a_fixture_root():
    src = build(
        _inp(
            "file",
            name="cpu/temp",
            kind="temperature",
            unit="C",
            path="/sys/class/thermal/thermal_zone0/temp",
            scale=0.001,
            offset=-0.5,
            tags={"zone": "0"},
        ),
        CTX,
    )
    [r] = _read(src)
    assert (r.sensor, r.kind, r.unit, r.tags) == ("cpu/temp", "temperature", "C", {"zone": "0"})
    assert r.value == pytest.approx(42.0)
    assert r.ts_ns == 1_700_000_000_000_000_000


def test_file_missing_or_garbage_is_a_failed_read():
    missing = build(_inp("file", path="/sys/class/thermal/thermal_zone9/temp"), CTX)
    with pytest.raises(SourceError, match="cannot read"):
        _read(missing)
    broken = build(_inp("file", path="/sys/class/thermal/thermal_zone0/broken"), CTX)
    with pytest.raises(SourceError, match="does not hold a number"):
        _read(broken)


def test_file_counter_kind_gives_an_integer(tmp_path):
    (tmp_path / "n").write_text("41.6\n")
    [r] = _read(build(_inp("file", kind="counter", path=str(tmp_path / "n"))))
    assert r.value == 42 and type(r.value) is int


# ---------------------------------------------------------------- command


def _cmd(mode: str, **kw: object):
    return build(_inp("command", command=[sys.executable, EMIT, mode], **kw), CTX)


def test_command_number():
    [r] = _read(_cmd("number", name="room/temp", kind="temperature", unit="C"))
    assert (r.sensor, r.value, r.unit) == ("room/temp", 21.5, "C")


def test_command_keyvalue_lines_become_one_reading_per_key():
    rs = _read(_cmd("keyvalue", name="env"))
    assert [(r.sensor, r.value) for r in rs] == [("env/temp", 21.5), ("env/humidity", 40.0)]


def test_command_json_leaves_and_object_kinds():
    rs = _read(_cmd("json", name="pump"))
    assert [(r.sensor, r.value) for r in rs] == [
        ("pump/temp", 21.5),
        ("pump/nested/rpm", 1200.0),
        ("pump/nested/on", True),
    ]
    [gps] = _read(_cmd("gps", name="truck", kind="gps"))
    assert gps.value == {"lat": 52.1, "lon": 4.3, "alt": 5.0}


def test_command_string_form_is_split_like_a_shell():
    src = build(_inp("command", command=f"{sys.executable} {EMIT} number", name="x"), CTX)
    assert _read(src)[0].value == 21.5


def test_command_failures_are_failed_reads():
    with pytest.raises(SourceError, match="exited with 3: sensor bus error"):
        _read(_cmd("fail"))
    with pytest.raises(SourceError, match="not a number"):
        _read(_cmd("bad", format="number"))
    with pytest.raises(SourceError, match="cannot run"):
        _read(build(_inp("command", command=["/nonexistent/prog"]), CTX))


def test_command_timeout_kills_the_program():
    src = _cmd("hang", timeout="300ms")
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="timed out"):
        _read(src)
    assert time.monotonic() - t0 < 30  # killed, not waited for (60 s)


def test_command_needs_a_command():
    with pytest.raises(AgentConfigError, match="key 'command'"):
        build(_inp("command"), CTX)


# ---------------------------------------------------------------- simulated


def _sim(**kw: object) -> SimulatedSource:
    src = build(_inp("simulated", **kw), CTX)
    assert isinstance(src, SimulatedSource)
    return src


def test_simulated_is_deterministic_for_a_seed():
    for waveform in ("sine", "random_walk", "step", "constant"):
        a = _sim(waveform=waveform, seed=7, noise=0.5, names=["a", "b"])
        b = _sim(waveform=waveform, seed=7, noise=0.5, names=["a", "b"])
        va = [r.value for _ in range(20) for r in a.sample()]
        vb = [r.value for _ in range(20) for r in b.sample()]
        assert va == vb
    c = _sim(waveform="random_walk", seed=8)
    d = _sim(waveform="random_walk", seed=9)
    assert [c.sample()[0].value for _ in range(5)] != [d.sample()[0].value for _ in range(5)]


def test_simulated_count_limit_and_invalid_every():
    src = _sim(kind="temperature", unit="C", count=10, invalid_every=5)
    rs = [r for _ in range(12) for r in src.sample()]
    assert len(rs) == 10 and src.exhausted
    result = ReadingValidator().validate_batch([r.to_wire() for r in rs])
    assert [rej.index for rej in result.rejects] == [4, 9]


@pytest.mark.parametrize(
    ("kind", "unit"),
    [
        ("temperature", "C"),
        ("humidity", "%"),
        ("pressure", "hPa"),
        ("gauge", None),
        ("counter", None),
        ("state", None),
        ("event", None),
        ("gps", None),
        ("acceleration", "m/s2"),
    ],
)
def test_simulated_kinds_validate_and_invalid_ones_are_rejected(kind, unit):
    src = _sim(kind=kind, unit=unit, amplitude=80.0, invalid_every=4, seed=3)
    wire = [r.to_wire() for _ in range(8) for r in src.sample()]
    result = ReadingValidator().validate_batch(wire)
    assert [rej.index for rej in result.rejects] == [3, 7]


def test_simulated_sine_follows_sample_time_not_wall_clock():
    src = _sim(waveform="sine", base=10.0, amplitude=2.0, period="4s", interval=1.0)
    vals = [src.sample()[0].value for _ in range(4)]
    assert vals == pytest.approx([10.0, 12.0, 10.0, 8.0])


# ---------------------------------------------------------------- system

_VM = namedtuple("_VM", "percent available")
_DU = namedtuple("_DU", "percent")
_NIO = namedtuple("_NIO", "bytes_sent bytes_recv")
_T = namedtuple("_T", "label current")


def _fake_psutil(fail: bool = False) -> types.ModuleType:
    ps = types.ModuleType("psutil")

    def disk_usage(path: str) -> _DU:
        if fail:
            raise OSError(5, "I/O error")
        return _DU(12.5)

    ps.cpu_percent = lambda interval=None: 3.0  # type: ignore[attr-defined]
    ps.virtual_memory = lambda: _VM(40.0, 1024)  # type: ignore[attr-defined]
    ps.disk_usage = disk_usage  # type: ignore[attr-defined]
    ps.net_io_counters = lambda: _NIO(10, 20)  # type: ignore[attr-defined]
    ps.getloadavg = lambda: (0.5, 0.25, 0.125)  # type: ignore[attr-defined]
    ps.sensors_temperatures = lambda: {"coretemp": [_T("Core 0", 45.0), _T("", 46.0)]}  # type: ignore[attr-defined]
    return ps


def test_system_reports_every_metric_from_psutil():
    ctx = SourceContext(clock_ns=CTX.clock_ns, extras={"psutil": _fake_psutil()})
    src = build(_inp("system", name="host", disk_paths=["/data"]), ctx)
    assert "host/cpu" not in [r.sensor for r in _read(src)]  # primes psutil's cpu window
    rs = _read(src)
    got = {(r.sensor, r.kind, r.unit): r.value for r in rs}
    assert got == {
        ("host/cpu", "gauge", "%"): 3.0,
        ("host/memory", "gauge", "%"): 40.0,
        ("host/memory_available", "gauge", "B"): 1024.0,
        ("host/disk", "gauge", "%"): 12.5,
        ("host/net_sent", "counter", "B"): 10,
        ("host/net_recv", "counter", "B"): 20,
        ("host/load1", "gauge", None): 0.5,
        ("host/load5", "gauge", None): 0.25,
        ("host/load15", "gauge", None): 0.125,
        ("host/temp/coretemp_Core_0", "temperature", "C"): 45.0,
        ("host/temp/coretemp_1", "temperature", "C"): 46.0,
    }
    assert next(r.tags for r in rs if r.sensor == "host/disk") == {"path": "/data"}
    assert not ReadingValidator().validate_batch([r.to_wire() for r in rs]).rejects


def test_system_metric_selection_and_os_errors():
    ctx = SourceContext(extras={"psutil": _fake_psutil(fail=True)})
    src = build(_inp("system", metrics=["cpu", "load"]), ctx)
    _read(src)
    rs = _read(src)
    assert [r.sensor for r in rs] == ["system/cpu", "system/load1", "system/load5", "system/load15"]
    with pytest.raises(SourceError, match="psutil failed"):
        _read(build(_inp("system", metrics=["disk"]), ctx))
    with pytest.raises(AgentConfigError, match="unknown metric 'gpu'"):
        build(_inp("system", metrics=["gpu"]), ctx)


def test_system_without_psutil_is_a_clear_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # makes `import psutil` fail
    with pytest.raises(AgentConfigError, match=r"needs psutil: pip install"):
        build(_inp("system"))
