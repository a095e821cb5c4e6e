"""Decoded BATCH -> validated, storage-shaped rows plus reject reports (pure).

`prepare_batch` validates the readings of one batch as a whole with
`schemas.readings.ReadingValidator` and turns the valid ones into columnar rows for
`collector.ingest.writer`: one row per scalar reading, one row per field for composite values
(gps `{lat, lon}` -> two rows whose series keys differ only in `field`). Invalid readings
become `Reject`s for the ACK plus dead-letter rows (the reading msgpack-encoded as received,
and as JSON text for people).

Series key: (sensor, field, kind, unit, tags) where field is '' for scalar kinds, unit is the
reading's unit or the kind's default unit ('' when neither), and tags is canonical JSON with
sorted keys ('{}' when none). The writer prefixes the device id.

No I/O, no clock, no SQL in this module: the caller passes the receive time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import msgpack

from collector.storage.interface import DeadLetter as DeadLetter
from collector.storage.interface import PreparedBatch as PreparedBatch
from collector.storage.interface import SeriesKey as SeriesKey
from collector.storage.interface import StoredValue as StoredValue
from schemas.kinds import KindSpec
from schemas.readings import ReadingValidator
from schemas.wire import Reject

NO_TAGS: Final = "{}"
_NS_PER_MS: Final = 1_000_000


def canonical_tags(tags: Mapping[str, str] | None) -> str:
    """Tags as canonical JSON (sorted keys, no spaces); '{}' for none."""
    if not tags:
        return NO_TAGS
    return json.dumps(tags, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Ingest:
    """Validates batches and shapes them into rows; one instance per kind registry."""

    def __init__(self, validator: ReadingValidator) -> None:
        self.validator = validator
        self._default_unit: dict[str, str] = {
            name: spec.default_unit or "" for name, spec in validator.kinds.items()
        }

    @classmethod
    def from_kinds(cls, extra_kinds: Iterable[KindSpec] = ()) -> Ingest:
        return cls(ReadingValidator(extra_kinds))

    def prepare(self, seq: int, readings: Sequence[object], received_ns: int) -> PreparedBatch:
        """Validate `readings` and return rows for the writer plus rejects for the ACK."""
        result = self.validator.validate_batch(readings)
        out = PreparedBatch(seq=seq, received_ns=received_ns, valid_count=len(result.valid))
        keys, tss, values, lags = out.keys, out.ts, out.values, out.lag_ms
        default_unit = self._default_unit
        composites: list[tuple[str, str, int, dict[str, StoredValue], str, str]] = []
        for sensor, kind, ts, value, unit, tags in result.valid:
            unit_s = unit if unit is not None else default_unit[kind]
            tags_s = NO_TAGS if tags is None else canonical_tags(tags)
            if type(value) is dict:
                composites.append((sensor, kind, ts, value, unit_s, tags_s))
                continue
            keys.append((sensor, "", kind, unit_s, tags_s))
            tss.append(ts)
            values.append(value)  # type: ignore[arg-type]  # dict handled above
            lags.append((received_ns - ts) // _NS_PER_MS)
        out.scalar_rows = len(tss)
        for sensor, kind, ts, value, unit_s, tags_s in composites:
            lag = (received_ns - ts) // _NS_PER_MS
            for fname in sorted(value):
                keys.append((sensor, fname, kind, unit_s, tags_s))
                tss.append(ts)
                values.append(value[fname])
                lags.append(lag)
            out.composite_sizes.append(len(value))
        if result.rejects:
            out.rejects = tuple(result.rejects)
            out.dead_letters = tuple(_dead_letter(r, readings[r.index]) for r in result.rejects)
        return out


def _dead_letter(reject: Reject, reading: object) -> DeadLetter:
    try:
        raw = msgpack.packb(reading, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        raw = msgpack.packb(repr(reading), use_bin_type=True)
    text = json.dumps(_jsonable(reading), ensure_ascii=False, allow_nan=False)
    return DeadLetter(reject.index, raw, text, reject.code, reject.path, reject.message)


def _jsonable(v: object) -> object:
    """The decoded msgpack value as strict JSON (non-finite floats become strings)."""
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return repr(v)
