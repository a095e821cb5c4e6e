"""Rendering of listing rows (from `collector.query.readings`) as table, CSV, JSON or JSON Lines.

Every format streams: one row in, one row out, bounded memory for any number of rows
(`telemetry export` relies on this). The table, meant for a person at a terminal and the
default there, sizes its columns from the first TABLE_SAMPLE_ROWS rows.

No database or network access in this module; it writes only to the stream it is given.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from typing import Final, TextIO

from collector.errors import ConfigError

Row = dict[str, object]

FORMATS: Final = ("table", "csv", "json", "jsonl")
# Keys that only help programs (exact ns, ids): left out of the table a person reads.
_TABLE_HIDDEN: Final = frozenset({"ts_ns", "series_id", "first_ns", "last_ns", "received_ns"})


def default_format(stream: TextIO) -> str:
    """`table` on a terminal, `jsonl` when piped."""
    try:
        return "table" if stream.isatty() else "jsonl"
    except (AttributeError, ValueError):
        return "jsonl"


def check_format(fmt: str, *, option: str = "--format", allowed: Sequence[str] = FORMATS) -> str:
    """Return `fmt` if it is one of `allowed`. Raises ConfigError naming `option`."""
    if fmt not in allowed:
        raise ConfigError(f"{option}: must be one of {', '.join(allowed)}, got {fmt!r}")
    return fmt


def json_default(v: object) -> object:
    """json.dumps default: bytes as hex (nothing else non-JSON reaches the formats)."""
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).hex()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


# One encoder for every row: json.dumps with non-default options builds a new encoder per
# call, which cost 20 us per row (more than everything else a listing does with it).
_ENCODER: Final = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=json_default
)


def _json_safe(v: object) -> object:
    # JSON has no NaN/Infinity; readings are finite by validation, aggregates of nothing are
    # None, so only a hand-edited DB could hold one.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def dumps_json(obj: object) -> str:
    """Compact JSON (UTF-8 kept as is); a non-finite float becomes null."""
    try:
        return _ENCODER.encode(obj)
    except ValueError:
        return _ENCODER.encode(_json_safe(obj))


def dumps_row(row: Row) -> str:
    """One row as a compact JSON object."""
    return dumps_json(row)


def write_rows(rows: Iterable[Row], columns: Sequence[str], fmt: str, out: TextIO) -> int:
    """Write rows in `fmt` to `out`; returns the number of rows written.

    `columns` orders the table and CSV columns; keys not in it are appended for CSV and kept
    for JSON (the machine formats carry everything, e.g. `ts_ns`).
    """
    if fmt == "table":
        return _write_table(rows, columns, out)
    writer = RowWriter(fmt, columns, out)
    for row in rows:
        writer.write(row)
    writer.close()
    return writer.count


class RowWriter:
    """Writes rows one at a time (for export and tail): constant memory in every format.

    `table` here prints one unaligned line per row (columns cannot be sized in advance).
    """

    def __init__(self, fmt: str, columns: Sequence[str], out: TextIO) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"--format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.fmt = fmt
        self.columns = list(columns)
        self.out = out
        self.count = 0
        self._csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        self._header: list[str] = []

    def write(self, row: Row) -> None:
        """Write one row."""
        if self.fmt == "jsonl":
            self.out.write(dumps_row(row) + "\n")
        elif self.fmt == "json":
            self.out.write(("[\n" if self.count == 0 else ",\n") + dumps_row(row))
        elif self._csv is not None:
            if self.count == 0:
                self._header = [c for c in self.columns if c in row]
                self._header += [k for k in row if k not in self.columns]
                self._csv.writerow(self._header)
            self._csv.writerow([_cell_csv(row.get(k)) for k in self._header])
        else:
            self.out.write(_table_line(row, self.columns) + "\n")
        self.count += 1

    def close(self) -> None:
        """Finish the document (closing bracket, or a header when no row came)."""
        if self.fmt == "json":
            self.out.write("\n]\n" if self.count else "[]\n")
        elif self._csv is not None and self.count == 0:
            self._csv.writerow(self.columns)
        self.out.flush()


def _table_line(row: Row, columns: Sequence[str]) -> str:
    parts: list[str] = []
    for c in columns:
        if c in _TABLE_HIDDEN or c == "unit":
            continue
        text = _cell_table(row.get(c))
        if c == "value" and row.get("unit") and row.get("agg") != "count":
            text = f"{text} {row['unit']}"
        if text:
            parts.append(text)
    return "  ".join(parts)


def _cell_csv(v: object) -> object:
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    return v


def _cell_table(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return ",".join(f"{k}={val}" for k, val in sorted(v.items()))
    if isinstance(v, float):
        return (
            f"{v:.6g}"
            if abs(v) >= 1e15 or (v != 0 and abs(v) < 1e-4)
            else f"{v:.6f}".rstrip("0").rstrip(".")
        )
    return str(v)


# The table sizes its columns from this many rows, then streams the rest at those widths
# (a longer cell later just pushes its line out): memory stays bounded for any listing.
TABLE_SAMPLE_ROWS: Final = 500


def _write_table(rows: Iterable[Row], columns: Sequence[str], out: TextIO) -> int:
    it = iter(rows)
    sample = list(itertools.islice(it, TABLE_SAMPLE_ROWS))
    if not sample:
        out.write("(no rows)\n")
        return 0
    cols = [c for c in columns if c not in _TABLE_HIDDEN]
    with_unit = "value" in cols and "unit" in cols
    if with_unit:
        cols.remove("unit")
    # A column empty in every row (e.g. `field` when no composite kind is listed) is noise.
    cols = [c for c in cols if any(_cell_table(r.get(c)) for r in sample)] or cols[:1]

    def cells(r: Row) -> list[str]:
        line = []
        for c in cols:
            text = _cell_table(r.get(c))
            if c == "value" and with_unit and r.get("unit") and r.get("agg") != "count":
                text = f"{text} {r['unit']}"
            line.append(text)
        return line

    sample_cells = [cells(r) for r in sample]
    widths = [max(len(c), *(len(line[i]) for line in sample_cells)) for i, c in enumerate(cols)]
    right = {
        i
        for i, c in enumerate(cols)
        if all(isinstance(r.get(c), int | float) or r.get(c) is None for r in sample)
    }

    def fmt_line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    out.write(fmt_line([c.upper() for c in cols]) + "\n")
    for line in sample_cells:
        out.write(fmt_line(line) + "\n")
    n = len(sample)
    for r in it:
        out.write(fmt_line(cells(r)) + "\n")
        n += 1
    return n
