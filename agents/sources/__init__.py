"""The source registry: name -> factory, filled by the `@register` decorator.

A source reads one sensor or one kind of system information and returns readings. It knows
nothing about batching, the spool, transport or the collector. Each lives in its own module
here (`file`, `command`, `simulated`, `system`), registers itself by name, validates its
options in the constructor (raising `SourceConfigError`) and does no I/O there; blocking
reads go through `asyncio.to_thread`; the clock and filesystem root come from
`SourceContext` so tests can point a source at fixtures.

Errors:
    SourceConfigError  an option is invalid (startup; one line naming the key)
    SourceError        one read failed (file missing, command failed); logged, retried

Imports only the standard library and `schemas` (+ the config dataclasses).
"""

from __future__ import annotations

import importlib
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from agents.config import AgentConfigError, InputConfig, parse_duration_s
from schemas.kinds import BUILTIN_KINDS, KIND_NAME_RE, KindSpec
from schemas.wire import Reading

BUILTIN_MODULES: Final = ("command", "file", "simulated", "system")
KINDS: Final[Mapping[str, KindSpec]] = {k.name: k for k in BUILTIN_KINDS}
_SENSOR_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_./:-]+")


class SourceConfigError(ValueError):
    """An input option is invalid; the message starts with the key at fault."""


class SourceError(Exception):
    """One read failed; the input is retried on its next interval."""


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What a source may take from its environment, replaceable in tests."""

    clock_ns: Callable[[], int] = time.time_ns
    root: Path = Path("/")
    # Relative paths in options are relative to the config file's directory.
    base_dir: Path = Path()
    extras: Mapping[str, object] = field(default_factory=dict)

    def resolve(self, path: str) -> Path:
        """A config path: absolute ones under the filesystem root, relative ones in base_dir."""
        p = Path(path)
        return self.root / p.relative_to("/") if p.is_absolute() else self.base_dir / p


class Source(Protocol):
    """A configured input: `read` returns the readings of one sample."""

    async def read(self) -> list[Reading]: ...


SourceFactory = Callable[[InputConfig, SourceContext], Source]
_REGISTRY: Final[dict[str, SourceFactory]] = {}


def register(name: str) -> Callable[[SourceFactory], SourceFactory]:
    """Class decorator: make a source available as `[[inputs.<name>]]`."""

    def deco(factory: SourceFactory) -> SourceFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise RuntimeError(f"source {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def load_builtins() -> None:
    """Import the built-in source modules so they register themselves."""
    for mod in BUILTIN_MODULES:
        importlib.import_module(f"agents.sources.{mod}")


def source_names() -> frozenset[str]:
    load_builtins()
    return frozenset(_REGISTRY)


def build(
    cfg: InputConfig, ctx: SourceContext | None = None, *, file: str | Path | None = None
) -> Source:
    """Construct the source for one input table (`file`: the config file, for errors).

    Raises AgentConfigError naming the file, table and key when the options are invalid.
    """
    load_builtins()
    factory = _REGISTRY.get(cfg.source)
    prefix = f"{file}: " if file is not None else ""
    if factory is None:
        known = ", ".join(sorted(_REGISTRY))
        raise AgentConfigError(f"{prefix}[[inputs.{cfg.source}]]: unknown source (known: {known})")
    where = f"{prefix}{cfg.label}"
    if cfg.kind is not None and not KIND_NAME_RE.match(cfg.kind):
        raise AgentConfigError(f"{where}, key 'kind': {cfg.kind!r} is not a kind name")
    try:
        return factory(cfg, ctx or SourceContext())
    except SourceConfigError as exc:
        raise AgentConfigError(f"{where}, {exc}") from None


class Options:
    """Typed access to a source's own options; unknown keys are an error."""

    def __init__(self, cfg: InputConfig, allowed: set[str]) -> None:
        self._data = dict(cfg.options)
        extra = sorted(set(self._data) - allowed)
        if extra:
            raise SourceConfigError(f"key '{extra[0]}': unknown option for this source")

    def has(self, key: str) -> bool:
        return key in self._data

    def raw(self, key: str) -> object:
        return self._data.get(key)

    def str_(self, key: str, default: str | None = None) -> str:
        v = self._data.get(key, default)
        if not isinstance(v, str) or not v:
            raise SourceConfigError(f"key '{key}': required, a non-empty string")
        return v

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        v = self._data.get(key, default)
        if v not in choices:
            raise SourceConfigError(f"key '{key}': must be one of {', '.join(choices)}")
        assert isinstance(v, str)
        return v

    def number(self, key: str, default: float, *, lo: float | None = None) -> float:
        v = self._data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise SourceConfigError(f"key '{key}': must be a finite number, got {v!r}")
        if lo is not None and v < lo:
            raise SourceConfigError(f"key '{key}': must be >= {lo}, got {v!r}")
        return float(v)

    def int_(self, key: str, default: int | None, *, lo: int = 0) -> int | None:
        v = self._data.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise SourceConfigError(f"key '{key}': must be an integer >= {lo}, got {v!r}")
        return v

    def duration(self, key: str, default_s: float) -> float:
        if key not in self._data:
            return default_s
        try:
            return parse_duration_s(self._data[key])
        except ValueError as exc:
            raise SourceConfigError(f"key '{key}': {exc}") from None

    def str_list(self, key: str, default: list[str]) -> list[str]:
        v = self._data.get(key, default)
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise SourceConfigError(f"key '{key}': must be a list of strings")
        return list(v)


def sensor_name(*parts: str) -> str:
    """Join name parts with '/', replacing characters a sensor name may not hold with '_'."""
    return "/".join(_SENSOR_UNSAFE.sub("_", p).strip("_") or "_" for p in parts if p)


def coerce(kind: str, value: float) -> int | float | bool:
    """A parsed number as the kind wants it: int for integer kinds, bool for bool kinds."""
    spec = KINDS.get(kind)
    if spec is not None and spec.type == "integer":
        return round(value)
    if spec is not None and spec.type == "bool":
        return bool(value)
    return value


def tags_of(cfg: InputConfig, extra: Mapping[str, str] | None = None) -> Mapping[str, str] | None:
    """The input's tags plus `extra`, or None when there are none (nil on the wire)."""
    merged = {**cfg.tags, **(extra or {})}
    return merged or None


__all__ = [
    "BUILTIN_MODULES",
    "KINDS",
    "Options",
    "Source",
    "SourceConfigError",
    "SourceContext",
    "SourceError",
    "build",
    "coerce",
    "load_builtins",
    "register",
    "sensor_name",
    "source_names",
    "tags_of",
]
