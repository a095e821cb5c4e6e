"""`simulated` source: deterministic synthetic readings for demos, tests and load tests.

    [[inputs.simulated]]
    names = ["greenhouse/air-temp", "greenhouse/soil-temp"]   # or name = "..."
    kind = "temperature"
    unit = "C"
    interval = "1s"
    waveform = "sine"        # sine | random_walk | step | constant
    base = 20.0              # centre value (default depends on the kind)
    amplitude = 5.0          # sine amplitude, step height, random-walk step size
    period = "10m"           # sine period / step length, in sample time
    noise = 0.1              # standard deviation of added gaussian noise
    seed = 1                 # same seed, same sequence
    count = 100              # stop after this many samples (default: forever)
    invalid_every = 10       # every 10th sample is invalid for its kind (demo of rejects)

Values depend only on the seed and the sample number (time is sample * interval), never on
the wall clock, so two runs with the same seed produce the same values; timestamps come from
the context clock. Kinds: any number kind, `counter` (increasing integer), `state` (bool),
`event`/`text` (short text), `gps` ({lat, lon, alt} wandering around `lat`/`lon`) and
`acceleration` ({x, y, z}). No I/O at all.
"""

from __future__ import annotations

import math
import random
from typing import Final

from agents.config import InputConfig
from agents.sources import (
    KINDS,
    Options,
    SourceContext,
    register,
    sensor_name,
    tags_of,
)
from schemas.wire import Reading, WireValue

WAVEFORMS: Final = ("sine", "random_walk", "step", "constant")
# Plausible centre values so a demo looks like the sensor it names.
_DEFAULT_BASE: Final = {
    "temperature": 20.0,
    "humidity": 50.0,
    "pressure": 1013.0,
    "voltage": 12.0,
    "current": 1.0,
    "power": 100.0,
    "energy": 0.0,
}


@register("simulated")
class SimulatedSource:
    def __init__(self, cfg: InputConfig, ctx: SourceContext) -> None:
        opts = Options(
            cfg,
            {
                "waveform",
                "base",
                "amplitude",
                "period",
                "noise",
                "seed",
                "count",
                "invalid_every",
                "lat",
                "lon",
            },
        )
        self.kind = cfg.kind or "gauge"
        self.unit = cfg.unit
        self.tags = tags_of(cfg)
        self.interval_s = cfg.interval_s
        self.waveform = opts.choice("waveform", "sine", WAVEFORMS)
        self.base = opts.number("base", _DEFAULT_BASE.get(self.kind, 0.0))
        self.amplitude = opts.number("amplitude", 1.0)
        self.period_s = opts.duration("period", 60.0)
        self.noise = opts.number("noise", 0.0, lo=0.0)
        self.count = opts.int_("count", None, lo=1)
        self.invalid_every = opts.int_("invalid_every", None, lo=1)
        self.lat = opts.number("lat", 52.0)
        self.lon = opts.number("lon", 4.3)
        seed = opts.int_("seed", 0) or 0
        names = list(cfg.names) or [cfg.name or sensor_name("sim", self.kind)]
        self._sensors = [
            _Channel(name, random.Random(seed * 1_000_003 + i)) for i, name in enumerate(names)
        ]
        self._clock = ctx.clock_ns
        self.samples = 0

    @property
    def exhausted(self) -> bool:
        """True once `count` samples have been taken."""
        return self.count is not None and self.samples >= self.count

    async def read(self) -> list[Reading]:
        return self.sample()

    def sample(self) -> list[Reading]:
        """Take the next sample (synchronously: there is nothing to wait for)."""
        if self.exhausted:
            return []
        n = self.samples
        self.samples += 1
        ts = self._clock()
        invalid = self.invalid_every is not None and (n + 1) % self.invalid_every == 0
        out = []
        for i, ch in enumerate(self._sensors):
            value = self._invalid() if invalid else self._value(ch, n, i)
            out.append(Reading(ch.sensor, self.kind, ts, value, self.unit, self.tags))
        return out

    def _wave(self, ch: _Channel, n: int, phase: float) -> float:
        t = n * self.interval_s
        match self.waveform:
            case "sine":
                v = self.base + self.amplitude * math.sin(2 * math.pi * t / self.period_s + phase)
            case "random_walk":
                ch.walk += ch.rng.uniform(-self.amplitude, self.amplitude)
                v = self.base + ch.walk
            case "step":
                v = self.base + self.amplitude * (int(t // self.period_s) % 2)
            case _:
                v = self.base
        if self.noise:
            v += ch.rng.gauss(0.0, self.noise)
        return v

    def _value(self, ch: _Channel, n: int, i: int) -> WireValue:
        spec = KINDS.get(self.kind)
        phase = i * 0.7
        if self.kind == "gps":
            ch.walk += ch.rng.uniform(-1e-4, 1e-4)
            return {
                "lat": round(self.lat + ch.walk, 7),
                "lon": round(self.lon + 0.5 * ch.walk + 1e-5 * n, 7),
                "alt": round(10.0 + ch.rng.uniform(-0.5, 0.5), 2),
            }
        if self.kind == "acceleration":
            return {
                axis: round(self._wave(ch, n, phase + k) + (9.81 if axis == "z" else 0.0), 4)
                for k, axis in enumerate("xyz")
            }
        if spec is not None and spec.type == "integer":
            ch.total += 1 + int(abs(self._wave(ch, n, phase)))
            return ch.total
        if spec is not None and spec.type == "bool":
            return self._wave(ch, n, phase) >= self.base
        if spec is not None and spec.type == "text":
            return f"{ch.sensor} sample {n}"
        v = self._wave(ch, n, phase)
        if spec is not None:
            # Stay inside the kind's bounds (humidity 0-100 %, pressure >= 0) when valid.
            b = spec.units.get(self.unit or spec.default_unit or "", spec.bounds)
            if b.min is not None:
                v = max(v, b.min)
            if b.max is not None:
                v = min(v, b.max)
        return round(v, 6)

    def _invalid(self) -> WireValue:
        """A value the collector must reject for this kind."""
        spec = KINDS.get(self.kind)
        if spec is None or spec.type == "number":
            b = spec.units.get(self.unit or spec.default_unit or "", spec.bounds) if spec else None
            if b is not None and b.min is not None:
                return b.min - 1000.0  # e.g. below absolute zero
            if b is not None and b.max is not None:
                return b.max + 1000.0
            return "not-a-number"
        if spec.type == "object":
            return {"lat": 1000.0, "lon": 1000.0}  # no object kind has these in range
        if spec.type == "integer":
            return -1 if spec.bounds.min == 0 else "not-an-integer"
        return {"not": "scalar"}


class _Channel:
    """The per-sensor state of one simulated input (no module-level state)."""

    __slots__ = ("rng", "sensor", "total", "walk")

    def __init__(self, sensor: str, rng: random.Random) -> None:
        self.sensor = sensor
        self.rng = rng
        self.walk = 0.0
        self.total = 0
