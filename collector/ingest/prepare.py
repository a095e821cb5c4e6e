"""Decoded BATCH -> validated, storage-shaped rows plus reject reports (pure).

`prepare_batch` validates the readings of one batch as a whole with
`schemas.readings.ReadingValidator` and turns the valid ones into columnar rows for
`collector.ingest.writer`: one row per scalar reading, one row per field for composite values
(gps `{lat, lon}` -> two rows whose series keys differ only in `field`). Invalid readings
become `Reject`s for the ACK plus dead-letter rows (the reading msgpack-encoded as received,
and as JSON text for people).

A GBATCH (protocol v1.2) also carries series groups: `prepare(..., groups=...)` validates them
column-wise (`ReadingValidator.validate_groups`) and extends the columns a group at a time;
the members of a group that fails are validated as readings, beside the batch's own. The
result is exactly the PreparedBatch of the expanded readings (`schemas.wire.expand_groups`):
same rows in the same order, same rejects (indexes in GBATCH order) and dead letters.

Series key: (sensor, field, kind, unit, tags) where field is '' for scalar kinds, unit is the
reading's unit or the kind's default unit ('' when neither), and tags is canonical JSON with
sorted keys ('{}' when none). The writer prefixes the device id.

No I/O, no clock, no SQL in this module: the caller passes the receive time.
"""

from __future__ import annotations

import bisect
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
from schemas.readings import BatchResult, ReadingValidator
from schemas.wire import Reject, expand_groups

NO_TAGS: Final = "{}"
_NOTHING: Final = BatchResult([], [], [])
# A composite reading held back until the scalar rows are in: (sensor, kind, ts, fields,
# unit, tags).
_Composite = tuple[str, str, int, dict[str, StoredValue], str, str]


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
        self._object_kinds = {name for name, spec in validator.kinds.items() if spec.fields}

    @classmethod
    def from_kinds(cls, extra_kinds: Iterable[KindSpec] = ()) -> Ingest:
        return cls(ReadingValidator(extra_kinds))

    def prepare(
        self,
        seq: int,
        readings: Sequence[object],
        received_ns: int,
        groups: Sequence[object] = (),
    ) -> PreparedBatch:
        """Validate `readings` (and a GBATCH's well-formed `groups`, whose members follow the
        readings in index order) and return rows for the writer plus rejects for the ACK."""
        if groups:
            return self._prepare_grouped(seq, readings, groups, received_ns)
        result = self.validator.validate_batch(readings)
        out = PreparedBatch(seq=seq, received_ns=received_ns, valid_count=len(result.valid))
        keys, tss, values = out.keys, out.ts, out.values
        default_unit = self._default_unit
        composites: list[_Composite] = []
        for sensor, kind, ts, value, unit, tags in result.valid:
            unit_s = unit if unit is not None else default_unit[kind]
            tags_s = NO_TAGS if tags is None else canonical_tags(tags)
            if type(value) is dict:
                composites.append((sensor, kind, ts, value, unit_s, tags_s))
                continue
            keys.append((sensor, "", kind, unit_s, tags_s))
            tss.append(ts)
            values.append(value)  # type: ignore[arg-type]  # dict handled above
        out.scalar_rows = len(tss)
        _add_composites(out, composites)
        if result.rejects:
            out.rejects = tuple(result.rejects)
            out.dead_letters = tuple(_dead_letter(r, readings[r.index]) for r in result.rejects)
        return out

    def _prepare_grouped(
        self, seq: int, readings: Sequence[object], groups: Sequence[object], received_ns: int
    ) -> PreparedBatch:
        checked = self.validator.validate_groups(groups)
        # Validated as readings: the batch's own, then the members of every group that failed.
        # `spans`: (position in `rows`, index in the batch) where each failed group starts.
        rows = list(readings)
        spans: list[tuple[int, int]] = []
        ends: list[int] = []
        index = len(readings)
        for g, ok in zip(groups, checked, strict=True):
            n = len(g[4])  # type: ignore[index]  # a well-formed group
            if ok is None:
                spans.append((len(rows), index))
                rows.extend(expand_groups((), (g,)))
            ends.append(len(rows))
            index += n
        result = self.validator.validate_batch(rows) if rows else _NOTHING
        out = PreparedBatch(seq=seq, received_ns=received_ns)
        keys, tss, values = out.keys, out.ts, out.values
        default_unit = self._default_unit
        composites: list[_Composite] = []
        valid, valid_index = result.valid, result.valid_index
        p = 0
        count = 0

        def take_rows(upto: int) -> None:
            # The valid readings validated as rows, up to position `upto` in `rows`.
            nonlocal p
            while p < len(valid_index) and valid_index[p] < upto:
                sensor, kind, ts, value, unit, tags = valid[p]
                p += 1
                unit_s = unit if unit is not None else default_unit[kind]
                tags_s = NO_TAGS if tags is None else canonical_tags(tags)
                if type(value) is dict:
                    composites.append((sensor, kind, ts, value, unit_s, tags_s))
                    continue
                keys.append((sensor, "", kind, unit_s, tags_s))
                tss.append(ts)
                values.append(value)  # type: ignore[arg-type]  # dict handled above

        take_rows(len(readings))
        for g, end in zip(checked, ends, strict=True):
            if g is None:
                take_rows(end)
                continue
            sensor, kind, unit, tags, gts, gvalues = g
            count += len(gts)
            unit_s = unit if unit is not None else default_unit[kind]
            tags_s = NO_TAGS if tags is None else canonical_tags(tags)
            if kind in self._object_kinds:
                composites.extend(
                    (sensor, kind, ts, value, unit_s, tags_s)  # type: ignore[misc]  # dicts
                    for ts, value in zip(gts, gvalues, strict=True)
                )
                continue
            keys.extend([(sensor, "", kind, unit_s, tags_s)] * len(gts))
            tss.extend(gts)
            values.extend(gvalues)  # type: ignore[arg-type]  # scalars: not an object kind
        out.valid_count = count + len(valid)
        out.scalar_rows = len(tss)
        _add_composites(out, composites)
        if result.rejects:
            starts = [pos for pos, _ in spans]

            def batch_index(pos: int) -> int:
                k = bisect.bisect_right(starts, pos) - 1
                return pos if k < 0 else spans[k][1] + pos - spans[k][0]

            out.rejects = tuple(
                Reject(batch_index(r.index), r.code, r.path, r.message) for r in result.rejects
            )
            out.dead_letters = tuple(
                _dead_letter(r, rows[orig.index])
                for r, orig in zip(out.rejects, result.rejects, strict=True)
            )
        return out


def _add_composites(out: PreparedBatch, composites: list[_Composite]) -> None:
    """A composite reading's fields as rows after the scalar rows, one per field in name
    order, and its row count in `composite_sizes`."""
    keys, tss, values = out.keys, out.ts, out.values
    for sensor, kind, ts, value, unit_s, tags_s in composites:
        for fname in sorted(value):
            keys.append((sensor, fname, kind, unit_s, tags_s))
            tss.append(ts)
            values.append(value[fname])
        out.composite_sizes.append(len(value))


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
