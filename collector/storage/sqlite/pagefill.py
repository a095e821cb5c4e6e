"""The order block rows are inserted in, so that the blocks table's pages fill.

The blocks table is a rowid table and the compactor appends: SQLite puts each new row on the
rightmost leaf page while it fits and otherwise starts a new page with it, leaving the free
space of the old one for good. Inserted in series order, the hour blocks of bench/load.py's
sensors (per device seven rows of 180-360 bytes, then one of ~2.6 KB for a full-precision
series) left a fifth of the 4 KiB pages' room empty: the big row came with less room left.

`page_order` packs a batch of rows into page-sized groups (largest first, each group filled
with the largest rows that still fit) and returns them group after group, each group's
largest row first. The cell sizes are SQLite's own (record format, overflow rule), so the
groups are the pages SQLite fills; the page the batch starts on is not known, and a group
that does not fit there only moves the page boundary into the next group's small rows.
Nothing reads blocks in rowid order (scans go through the (series_id, start_ns) index).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Final, TypeVar

# Leaf page header of a table B-tree (docs: "B-tree Pages").
_LEAF_HEADER: Final = 8
# Cell pointer per cell, and room for rowid varints up to 2**28 blocks.
_CELL_POINTER: Final = 2
_ROWID_BYTES: Final = 4
# Left free per page group: the estimate never overfills a page when rounding differs.
_MARGIN: Final = 8

_Row = TypeVar("_Row", bound=Sequence[object])


def _varint_len(v: int) -> int:
    n = 1
    while v >= 0x80 and n < 9:
        v >>= 7
        n += 1
    return n


def _int_bytes(v: int) -> int:
    """Body bytes of an integer in SQLite's record format (serial types 1-6, 8, 9)."""
    if v in (0, 1):
        return 0
    for size, bound in ((1, 1 << 7), (2, 1 << 15), (3, 1 << 23), (4, 1 << 31), (6, 1 << 47)):
        if -bound <= v < bound:
            return size
    return 8


def record_bytes(row: Sequence[object]) -> int:
    """Bytes of `row` as a SQLite record, preceded by a NULL for the INTEGER PRIMARY KEY
    (stored as the rowid, not in the record)."""
    header = 1  # the id column's serial type 0
    body = 0
    for value in row:
        if value is None:
            header += 1
        elif isinstance(value, int):  # bool included: bound as 0/1
            header += 1
            body += _int_bytes(int(value))
        elif isinstance(value, float):
            header += 1
            body += 8
        else:
            size = len(value.encode()) if isinstance(value, str) else len(value)  # type: ignore[arg-type]
            header += _varint_len(2 * size + 13)
            body += size
    header += _varint_len(header + 1)
    return header + body


def cell_bytes(row: Sequence[object], page_size: int) -> int:
    """Bytes `row` takes on a leaf page of the blocks table: cell and cell pointer; a record
    over the page's local limit keeps only its local part there (the rest overflows)."""
    payload = record_bytes(row)
    usable = page_size
    max_local = usable - 35
    local = payload
    overflow_pointer = 0
    if payload > max_local:
        min_local = (usable - 12) * 32 // 255 - 23
        local = min_local + (payload - min_local) % (usable - 4)
        if local > max_local:
            local = min_local
        overflow_pointer = 4
    return _CELL_POINTER + _varint_len(payload) + _ROWID_BYTES + local + overflow_pointer


def page_order(rows: list[_Row], page_size: int) -> list[_Row]:
    """`rows` reordered so that appending them in this order fills pages of `page_size`."""
    if len(rows) < 2:
        return rows
    capacity = page_size - _LEAF_HEADER - _MARGIN
    sized = sorted((cell_bytes(row, page_size), i) for i, row in enumerate(rows))
    sizes = [s for s, _i in sized]
    out: list[_Row] = []
    while sized:
        size, i = sized.pop()
        sizes.pop()
        out.append(rows[i])
        free = capacity - size
        while sized:
            k = bisect_right(sizes, free) - 1  # the largest row that still fits
            if k < 0:
                break
            size, i = sized.pop(k)
            sizes.pop(k)
            out.append(rows[i])
            free -= size
    return out
