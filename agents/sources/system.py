"""`system` source: host metrics through psutil (an optional dependency).

    [[inputs.system]]
    name = "host"                 # sensor prefix, default "system"
    interval = "10s"
    metrics = ["cpu", "memory", "disk", "network", "load", "temperature"]
    disk_paths = ["/"]

Sensors: `<p>/cpu` (% busy since the last sample; from the second sample on), `<p>/memory` (% used),
`<p>/memory_available` (B), `<p>/disk` (% used, tag `path`), `<p>/net_sent` and
`<p>/net_recv` (B, counters), `<p>/load1|5|15`, and `<p>/temp/<chip>_<label>` (C) where the
OS exposes temperatures. psutil is imported when the source is built, so a device without it
gets one clear config error instead of a crash later; tests pass a fake psutil module.
"""

from __future__ import annotations

import asyncio
import importlib
from types import ModuleType
from typing import Final

from agents.config import InputConfig
from agents.sources import (
    Options,
    SourceConfigError,
    SourceContext,
    SourceError,
    register,
    sensor_name,
    tags_of,
)
from schemas.wire import Reading

METRICS: Final = ("cpu", "memory", "disk", "network", "load", "temperature")


def _import_psutil() -> ModuleType:
    try:
        return importlib.import_module("psutil")
    except ImportError:
        raise SourceConfigError(
            "the system source needs psutil: pip install 'sensor-telemetry[system]'"
        ) from None


@register("system")
class SystemSource:
    def __init__(self, cfg: InputConfig, ctx: SourceContext) -> None:
        opts = Options(cfg, {"metrics", "disk_paths"})
        self.metrics = opts.str_list("metrics", list(METRICS))
        for m in self.metrics:
            if m not in METRICS:
                raise SourceConfigError(f"key 'metrics': unknown metric {m!r}")
        self.disk_paths = opts.str_list("disk_paths", ["/"])
        ps = ctx.extras.get("psutil")
        self.ps: ModuleType = ps if isinstance(ps, ModuleType) else _import_psutil()
        self.prefix = cfg.name or "system"
        self.cfg = cfg
        self._clock = ctx.clock_ns
        self._cpu_primed = False

    async def read(self) -> list[Reading]:
        return await asyncio.to_thread(self._sample)

    def _r(
        self, name: str, kind: str, value: float | int, unit: str | None, ts: int, **tags: str
    ) -> Reading:
        return Reading(
            sensor_name(self.prefix, name), kind, ts, value, unit, tags_of(self.cfg, tags)
        )

    def _sample(self) -> list[Reading]:
        ps = self.ps
        ts = self._clock()
        out: list[Reading] = []
        try:
            if "cpu" in self.metrics:
                busy = float(ps.cpu_percent(interval=None))
                # The first call only starts psutil's measurement window (it returns 0.0), so
                # the first sample has no cpu reading rather than a false 0 %.
                if self._cpu_primed:
                    out.append(self._r("cpu", "gauge", busy, "%", ts))
                self._cpu_primed = True
            if "memory" in self.metrics:
                vm = ps.virtual_memory()
                out.append(self._r("memory", "gauge", float(vm.percent), "%", ts))
                out.append(self._r("memory_available", "gauge", float(vm.available), "B", ts))
            if "disk" in self.metrics:
                for path in self.disk_paths:
                    du = ps.disk_usage(path)
                    out.append(self._r("disk", "gauge", float(du.percent), "%", ts, path=path))
            if "network" in self.metrics:
                nio = ps.net_io_counters()
                out.append(self._r("net_sent", "counter", int(nio.bytes_sent), "B", ts))
                out.append(self._r("net_recv", "counter", int(nio.bytes_recv), "B", ts))
            if "load" in self.metrics and hasattr(ps, "getloadavg"):
                for n, v in zip((1, 5, 15), ps.getloadavg(), strict=True):
                    out.append(self._r(f"load{n}", "gauge", float(v), None, ts))
            if "temperature" in self.metrics and hasattr(ps, "sensors_temperatures"):
                for chip, entries in ps.sensors_temperatures().items():
                    for i, e in enumerate(entries):
                        label = f"{chip}_{e.label or i}"
                        out.append(
                            self._r(sensor_name("temp", label), "temperature", e.current, "C", ts)
                        )
        except OSError as exc:
            raise SourceError(f"psutil failed: {exc}") from None
        return out
