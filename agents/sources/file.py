"""`file` source: read one number from a file, such as a sysfs sensor.

    [[inputs.file]]
    name = "cpu/temp"
    kind = "temperature"
    unit = "C"
    path = "/sys/class/thermal/thermal_zone0/temp"
    scale = 0.001        # value = number * scale + offset
    offset = 0.0

A missing file or a file without a number is a failed read (`SourceError`), retried on the
next interval. The read itself runs in a worker thread; no I/O in the constructor.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agents.config import InputConfig
from agents.sources import (
    Options,
    SourceConfigError,
    SourceContext,
    SourceError,
    coerce,
    register,
    sensor_name,
    tags_of,
)
from schemas.wire import Reading

# A sensor file holds one short number; refuse to read a large file by mistake.
MAX_READ_BYTES = 4096


@register("file")
class FileSource:
    def __init__(self, cfg: InputConfig, ctx: SourceContext) -> None:
        opts = Options(cfg, {"path", "scale", "offset"})
        self.path = ctx.resolve(opts.str_("path"))
        self.scale = opts.number("scale", 1.0)
        self.offset = opts.number("offset", 0.0)
        if cfg.names:
            raise SourceConfigError("key 'names': the file source reads one sensor; use 'name'")
        self.sensor = cfg.name or sensor_name("file", Path(self.path).name)
        self.kind = cfg.kind or "gauge"
        self.unit = cfg.unit
        self.tags = tags_of(cfg)
        self._clock = ctx.clock_ns

    async def read(self) -> list[Reading]:
        ts = self._clock()
        value = await asyncio.to_thread(self._read_number)
        return [
            Reading(
                self.sensor,
                self.kind,
                ts,
                coerce(self.kind, value * self.scale + self.offset),
                self.unit,
                self.tags,
            )
        ]

    def _read_number(self) -> float:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_READ_BYTES)
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            raise SourceError(f"{self.path} is empty")
        try:
            return float(text.split()[0])
        except ValueError:
            raise SourceError(f"{self.path} does not hold a number: {text[:40]!r}") from None
