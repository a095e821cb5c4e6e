"""User-defined kinds: a TOML file compiles into validators; a broken file names the file,
the kind and the field at fault."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from schemas.kinds import BUILTIN_KINDS, KindFileError, load_kinds_file, merge_kinds
from schemas.readings import ReadingValidator

KINDS_TOML = """
[kinds.soil_moisture]
type = "number"
units = ["%", "vwc"]
default_unit = "%"
min = 0
max = 100
description = "volumetric water content"

[kinds.rain_ticks]
type = "integer"
unit = "ticks"
min = 0.5
max = 1000

[kinds.wind]
type = "object"
units = ["m/s", "km/h"]

[kinds.wind.fields]
speed = { type = "number", min = 0 }
direction = { type = "integer", min = 0, max = 359 }
gust = { type = "number", min = 0, required = false }
calm = { type = "bool", required = false }
station = { type = "text", required = false }

[kinds.door_note]
type = "text"
"""


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> ReadingValidator:
    path = tmp_path_factory.mktemp("kinds") / "kinds.toml"
    path.write_text(KINDS_TOML, encoding="utf-8")
    return ReadingValidator(load_kinds_file(path))


def rd(kind: str, value: object, unit: object = None) -> list[object]:
    return ["farm/field-3", kind, 1, value, unit, None]


ACCEPTED = [
    rd("soil_moisture", 35.5, "%"),
    rd("soil_moisture", 0, None),  # default unit
    rd("soil_moisture", 100.0, "vwc"),
    rd("rain_ticks", 1, "ticks"),
    rd("rain_ticks", 1000, None),
    rd("wind", {"speed": 3.5, "direction": 270}, "m/s"),
    rd("wind", {"speed": 0, "direction": 0, "gust": 9.0, "calm": False, "station": "n"}, "km/h"),
    rd("door_note", "left open", None),
    rd("temperature", 20.0, "C"),  # built-ins are still there
]


@pytest.mark.parametrize("reading", ACCEPTED, ids=lambda r: f"{r[1]}-{r[3]}")
def test_user_kind_accepts(validator: ReadingValidator, reading: list[object]) -> None:
    result = validator.validate_batch([reading])
    assert result.rejects == []
    assert len(result.valid) == 1


REJECTED = [
    (rd("soil_moisture", 100.1, "%"), "out_of_range", "value"),
    (rd("soil_moisture", -0.1, "vwc"), "out_of_range", "value"),
    (rd("soil_moisture", math.nan, "%"), "not_finite", "value"),
    (rd("soil_moisture", 50, "g"), "bad_unit", "unit"),
    (rd("rain_ticks", 0, "ticks"), "out_of_range", "value"),  # min 0.5 rounds up to 1
    (rd("rain_ticks", 1001, "ticks"), "out_of_range", "value"),
    (rd("rain_ticks", 1.0, "ticks"), "wrong_type", "value"),
    (rd("wind", {"speed": -1, "direction": 0}, "m/s"), "out_of_range", "value.speed"),
    (rd("wind", {"speed": 1, "direction": 360}, "m/s"), "out_of_range", "value.direction"),
    (rd("wind", {"speed": 1, "direction": 1.5}, "m/s"), "wrong_type", "value.direction"),
    (rd("wind", {"speed": 1}, "m/s"), "missing_field", "value.direction"),
    (rd("wind", {"speed": 1, "direction": 1, "temp": 3}, "m/s"), "unknown_field", "value.temp"),
    (rd("wind", {"speed": 1, "direction": 1, "calm": 1}, "m/s"), "wrong_type", "value.calm"),
    (rd("wind", {"speed": 1, "direction": 1}, "mph"), "bad_unit", "unit"),
    (rd("door_note", "x" * 1025, None), "too_long", "value"),
    (rd("door_note", "x", "chars"), "bad_unit", "unit"),
]


@pytest.mark.parametrize(
    ("reading", "code", "path"),
    REJECTED,
    ids=lambda x: str(x)[:40] if isinstance(x, list) else None,
)
def test_user_kind_rejects(
    validator: ReadingValidator, reading: list[object], code: str, path: str
) -> None:
    result = validator.validate_batch([reading])
    assert [(r.code, r.path) for r in result.rejects] == [(code, path)]


def test_user_kinds_are_described(validator: ReadingValidator) -> None:
    wind = validator.kinds["wind"]
    assert wind.type == "object"
    assert [(f.name, f.type, f.required) for f in wind.fields] == [
        ("speed", "number", True),
        ("direction", "integer", True),
        ("gust", "number", False),
        ("calm", "bool", False),
        ("station", "text", False),
    ]
    assert validator.kinds["soil_moisture"].description == "volumetric water content"
    assert validator.kinds["rain_ticks"].default_unit == "ticks"


def test_empty_file_defines_no_kinds(tmp_path: Path) -> None:
    path = tmp_path / "kinds.toml"
    path.write_text("", encoding="utf-8")
    assert load_kinds_file(path) == ()


# (id, TOML text, the substrings the error must contain besides the file name)
BROKEN = [
    ("not TOML", "[kinds.x\ntype = 1", ["not valid TOML"]),
    ("unknown top-level key", "[sensors.x]\ntype = 'number'", ["sensors"]),
    ("kinds not a table", "kinds = 3", ["'kinds' must be a table"]),
    ("bad kind name", "[kinds.Soil]\ntype = 'number'", ["kind 'Soil'", "name must match"]),
    (
        "redefines built-in",
        "[kinds.temperature]\ntype = 'number'",
        ["kind 'temperature'", "built-in"],
    ),
    ("missing type", "[kinds.x]\nunits = ['m']", ["kind 'x'", "field 'type'"]),
    ("unknown type", "[kinds.x]\ntype = 'float'", ["kind 'x'", "field 'type'"]),
    ("unknown key", "[kinds.x]\ntype = 'number'\nmaximum = 3", ["kind 'x'", "maximum"]),
    ("min not a number", "[kinds.x]\ntype = 'number'\nmin = 'low'", ["kind 'x'", "'min'"]),
    ("min > max", "[kinds.x]\ntype = 'number'\nmin = 5\nmax = 1", ["kind 'x'", "'min'", "'max'"]),
    ("infinite max", "[kinds.x]\ntype = 'number'\nmax = inf", ["kind 'x'", "'max'", "finite"]),
    ("units not a list", "[kinds.x]\ntype = 'number'\nunits = 'm'", ["kind 'x'", "field 'units'"]),
    ("bad unit", "[kinds.x]\ntype = 'number'\nunits = ['m s']", ["kind 'x'", "'m s'"]),
    (
        "default unit not in units",
        "[kinds.x]\ntype = 'number'\nunits = ['m']\ndefault_unit = 'cm'",
        ["kind 'x'", "field 'default_unit'", "'cm'"],
    ),
    ("bounds on bool", "[kinds.x]\ntype = 'bool'\nmin = 0", ["kind 'x'", "'min'/'max'"]),
    ("object without fields", "[kinds.x]\ntype = 'object'", ["kind 'x'", "fields"]),
    (
        "fields on a scalar",
        "[kinds.x]\ntype = 'number'\nfields = {a = {type = 'number'}}",
        ["'fields'"],
    ),
    (
        "field type object",
        "[kinds.x]\ntype = 'object'\n[kinds.x.fields]\nspeed = { type = 'object' }",
        ["kind 'x'", "field 'speed'", "'type'"],
    ),
    (
        "field bad name",
        "[kinds.x]\ntype = 'object'\n[kinds.x.fields]\nSpeed = { type = 'number' }",
        ["kind 'x'", "field 'Speed'"],
    ),
    (
        "field not a table",
        "[kinds.x]\ntype = 'object'\n[kinds.x.fields]\nspeed = 'number'",
        ["kind 'x'", "field 'speed'", "table"],
    ),
    (
        "field unknown key",
        "[kinds.x]\ntype = 'object'\n[kinds.x.fields]\nspeed = { type = 'number', unit = 'm' }",
        ["kind 'x'", "field 'speed'", "unit"],
    ),
    (
        "field required not bool",
        "[kinds.x]\ntype = 'object'\n[kinds.x.fields]\nspeed = { type = 'number', required = 1 }",
        ["kind 'x'", "field 'speed'", "'required'"],
    ),
    (
        "field min > max",
        "[kinds.x]\ntype = 'object'\n[kinds.x.fields]\nspeed = { type = 'number', min = 2, "
        "max = 1 }",
        ["kind 'x'", "field 'speed'", "'min'"],
    ),
    (
        "description not a string",
        "[kinds.x]\ntype = 'text'\ndescription = 3",
        ["field 'description'"],
    ),
]


@pytest.mark.parametrize(("text", "needles"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_kinds_file_names_file_kind_and_field(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    path = tmp_path / "my-kinds.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(KindFileError) as exc:
        load_kinds_file(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: ")
    for needle in needles:
        assert needle in message


def test_missing_kinds_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(KindFileError, match="cannot read kinds file") as exc:
        load_kinds_file(path)
    assert str(path) in str(exc.value)


def test_duplicate_kind_across_registries_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kinds.toml"
    path.write_text("[kinds.x]\ntype = 'bool'\n", encoding="utf-8")
    kinds = load_kinds_file(path)
    with pytest.raises(KindFileError, match="'x' is defined twice"):
        merge_kinds(BUILTIN_KINDS, kinds, kinds)
