"""docs/protocol.md stays true: its kinds table, code tables and limits match the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schemas import errors, readings, wire
from schemas.kinds import BUILTIN_KINDS, MAX_TEXT_CHARS, Bounds, KindSpec

DASH = "\N{EN DASH}"  # the table's "none" marker
DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")


def _range(b: Bounds) -> str:
    lo = None if b.min is None else f"{b.min:g}"
    hi = None if b.max is None else f"{b.max:g}"
    if lo is None and hi is None:
        return "any"
    if hi is None:
        return f"≥ {lo}"
    if lo is None:
        return f"≤ {hi}"
    return f"{lo} … {hi}"


def kind_row(k: KindSpec) -> str:
    """The row of the §5 table for one kind."""
    if k.type == "object":
        value = "map: " + ", ".join(
            f"`{f.name}` {f.type} {_range(f.bounds)}" + ("" if f.required else " (optional)")
            for f in k.fields
        )
    elif k.type == "integer":
        value = f"integer {_range(k.bounds)}"
    elif k.type == "text":
        value = f"string ≤ {MAX_TEXT_CHARS} chars"
    else:
        value = k.type
    if k.units:
        units = ", ".join(
            f"`{u}`" if _range(b) == "any" else f"`{u}` {_range(b)}" for u, b in k.units.items()
        )
    elif k.free_unit:
        units = f"any (≤ {readings.MAX_FREE_UNIT_CHARS} chars) or nil"
    else:
        units = "nil only"
    default = f"`{k.default_unit}`" if k.default_unit else DASH
    return f"| `{k.name}` | {value} | {units} | {default} | {k.description or DASH} |"


@pytest.mark.parametrize("kind", BUILTIN_KINDS, ids=lambda k: k.name)
def test_kinds_table_matches_the_registry(kind: KindSpec) -> None:
    assert kind_row(kind) in DOC.splitlines()


def test_kinds_table_has_no_extra_rows() -> None:
    rows = [
        line
        for line in DOC.splitlines()
        if re.match(r"^\| `[a-z_]+` \| (number|integer|bool|string|map)", line)
    ]
    assert len(rows) == len(BUILTIN_KINDS)


REJECT_CODES = sorted(
    v
    for k, v in vars(readings).items()
    if k.isupper() and not k.startswith("_") and isinstance(v, str) and v.islower()
)


@pytest.mark.parametrize("code", REJECT_CODES)
def test_every_reject_code_is_documented(code: str) -> None:
    assert f"| `{code}` |" in DOC


@pytest.mark.parametrize("code", sorted(errors.ERROR_CODES))
def test_every_error_code_is_documented(code: str) -> None:
    assert f"| `{code}` |" in DOC


LIMITS = {
    "MAX_FRAME_BYTES": wire.MAX_FRAME_BYTES,
    "MAX_BATCH_READINGS": wire.MAX_BATCH_READINGS,
    "MAX_STR_BYTES": wire.MAX_STR_BYTES,
    "MAX_MAP_ENTRIES": wire.MAX_MAP_ENTRIES,
    "MAX_INNER_ARRAY_LEN": wire.MAX_INNER_ARRAY_LEN,
    "MAX_MESSAGE_FIELDS": wire.MAX_MESSAGE_FIELDS,
    "MAX_BIN_BYTES": wire.MAX_BIN_BYTES,
    "MAX_EXT_BYTES": wire.MAX_EXT_BYTES,
    "MAX_NESTING_DEPTH": wire.MAX_NESTING_DEPTH,
    "BAD_FRAME_BUDGET": wire.BAD_FRAME_BUDGET,
    "HEARTBEAT_MS": wire.HEARTBEAT_MS,
    "IDLE_TIMEOUT_S": wire.IDLE_TIMEOUT_S,
    "HANDSHAKE_TIMEOUT_S": wire.HANDSHAKE_TIMEOUT_S,
    "MAX_INT64": wire.MAX_INT64,
    "MAX_TAGS": readings.MAX_TAGS,
    "MAX_TAG_VALUE_CHARS": readings.MAX_TAG_VALUE_CHARS,
    "MAX_FREE_UNIT_CHARS": readings.MAX_FREE_UNIT_CHARS,
    "MAX_TEXT_CHARS": MAX_TEXT_CHARS,
}


@pytest.mark.parametrize(("name", "value"), LIMITS.items())
def test_every_limit_is_documented_with_its_value(name: str, value: float) -> None:
    shown = str(int(value)) if float(value).is_integer() else str(value)
    assert re.search(rf"^\| `{name}` \| {shown}\b", DOC, re.MULTILINE), name


def test_patterns_are_documented() -> None:
    for pattern in (readings.SENSOR_PATTERN, readings.TAG_KEY_PATTERN):
        assert f"`{pattern}`" in DOC
