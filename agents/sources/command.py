"""`command` source: run a program every interval and parse what it prints.

    [[inputs.command]]
    name = "ups"                  # sensor name, or prefix for key=value / JSON keys
    kind = "voltage"
    unit = "V"
    command = ["/usr/local/bin/read-ups", "--battery"]   # or one string, split like a shell
    timeout = "5s"                # default: the interval, at most 10 s
    format = "auto"               # auto | number | keyvalue | json

Output formats: one number; `key=value` lines (one reading per key, sensor `<name>/<key>`);
JSON: a number, a flat or nested object of numbers/booleans (one reading per leaf), or, for an
object kind such as gps, the object itself as one reading. A non-zero exit, a timeout or
unparsable output is a failed read (`SourceError`). The program runs as an asyncio
subprocess without a shell; it is killed when it overruns its timeout.
"""

from __future__ import annotations

import asyncio
import json
import math
import shlex
from collections.abc import Iterator

from agents.config import InputConfig
from agents.sources import (
    KINDS,
    Options,
    SourceConfigError,
    SourceContext,
    SourceError,
    coerce,
    register,
    sensor_name,
    tags_of,
)
from schemas.wire import Reading, WireValue

FORMATS = ("auto", "number", "keyvalue", "json")
# A command's output is a few numbers; more than this is a misconfigured program.
MAX_OUTPUT_BYTES = 64 * 1024
MAX_TIMEOUT_S = 10.0


@register("command")
class CommandSource:
    def __init__(self, cfg: InputConfig, ctx: SourceContext) -> None:
        opts = Options(cfg, {"command", "timeout", "format"})
        raw = opts.raw("command")
        if isinstance(raw, str) and raw.strip():
            self.argv = shlex.split(raw)
        elif isinstance(raw, list) and raw and all(isinstance(a, str) for a in raw):
            self.argv = list(raw)
        else:
            raise SourceConfigError("key 'command': required, a string or a list of strings")
        self.timeout_s = opts.duration("timeout", min(cfg.interval_s, MAX_TIMEOUT_S))
        self.format = opts.choice("format", "auto", FORMATS)
        if cfg.names:
            raise SourceConfigError("key 'names': use 'name' (a sensor name or key prefix)")
        self.name = cfg.name
        self.kind = cfg.kind or "gauge"
        self.unit = cfg.unit
        self.tags = tags_of(cfg)
        self._clock = ctx.clock_ns

    async def read(self) -> list[Reading]:
        ts = self._clock()
        out = await self._run()
        return [
            Reading(sensor, self.kind, ts, value, self.unit, self.tags)
            for sensor, value in self._parse(out)
        ]

    async def _run(self) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise SourceError(f"cannot run {self.argv[0]}: {exc.strerror or exc}") from None
        try:
            async with asyncio.timeout(self.timeout_s):
                out, err = await proc.communicate()
        except TimeoutError:
            raise SourceError(f"{self.argv[0]} timed out after {self.timeout_s:g} s") from None
        finally:
            if proc.returncode is None:
                proc.kill()
                # Reap it so no zombie is left; kill makes this prompt.
                await asyncio.shield(proc.wait())
        if proc.returncode != 0:
            detail = err.decode("utf-8", "replace").strip().splitlines()
            raise SourceError(
                f"{self.argv[0]} exited with {proc.returncode}"
                + (f": {detail[-1][:200]}" if detail else "")
            )
        if len(out) > MAX_OUTPUT_BYTES:
            raise SourceError(f"{self.argv[0]} printed more than {MAX_OUTPUT_BYTES} bytes")
        return out.decode("utf-8", "replace")

    def _sensor(self, key: str | None) -> str:
        if key is None:
            return self.name or sensor_name(self.argv[0].rsplit("/", 1)[-1])
        return sensor_name(self.name, key) if self.name else sensor_name(key)

    def _parse(self, text: str) -> list[tuple[str, WireValue]]:
        fmt = self.format
        if fmt == "auto":
            stripped = text.strip()
            fmt = "json" if stripped[:1] in ("{", "[") else "keyvalue" if "=" in text else "number"
        if fmt == "number":
            return [(self._sensor(None), coerce(self.kind, _number(text.strip(), "output")))]
        if fmt == "keyvalue":
            return [(self._sensor(k), v) for k, v in self._keyvalues(text)]
        return self._json(text)

    def _keyvalues(self, text: str) -> Iterator[tuple[str, WireValue]]:
        found = False
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, val = line.partition("=")
            if not sep or not key.strip():
                raise SourceError(f"line {n} is not key=value: {line[:60]!r}")
            found = True
            yield key.strip(), coerce(self.kind, _number(val.strip(), f"line {n}"))
        if not found:
            raise SourceError("no key=value lines in the output")

    def _json(self, text: str) -> list[tuple[str, WireValue]]:
        try:
            doc: object = json.loads(text)
        except ValueError as exc:
            raise SourceError(f"output is not JSON: {exc}") from None
        spec = KINDS.get(self.kind)
        if isinstance(doc, dict) and spec is not None and spec.type == "object":
            return [(self._sensor(None), {k: v for k, v in doc.items() if _is_scalar(v)})]
        if isinstance(doc, int | float | bool):
            return [(self._sensor(None), _coerce_leaf(self.kind, doc))]
        if not isinstance(doc, dict):
            raise SourceError("JSON output must be a number or an object")
        out: list[tuple[str, WireValue]] = [
            (self._sensor(k), _coerce_leaf(self.kind, v)) for k, v in _leaves(doc, "")
        ]
        if not out:
            raise SourceError("JSON output holds no numbers")
        return out


def _number(text: str, where: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise SourceError(f"{where}: not a number: {text[:40]!r}") from None
    if not math.isfinite(v):
        raise SourceError(f"{where}: not a finite number: {text[:40]!r}")
    return v


def _coerce_leaf(kind: str, v: int | float | bool) -> int | float | bool:
    return v if isinstance(v, bool) else coerce(kind, float(v))


def _is_scalar(v: object) -> bool:
    return isinstance(v, int | float | bool)


def _leaves(doc: dict[str, object], prefix: str) -> Iterator[tuple[str, int | float | bool]]:
    for k, v in doc.items():
        key = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            yield from _leaves(v, key)
        elif isinstance(v, int | float | bool):
            yield key, v
