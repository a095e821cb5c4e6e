"""Compaction settings: window and merge sizes, grace periods, per-step bounds.

Its own module because the compactor and the modules it drives (`blockwrites`, `staging`,
`merging`) all take a `CompactionConfig`; with it here none of them imports the compactor.
Pure values: no SQLite, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from collector.storage.sqlite import blocks as codec

# First level: the head's closed 2-minute windows move into small per-series blocks, so the
# head holds about WINDOW_NS + GRACE_NS of readings (a per-series read walks every series'
# head rows: its cost grows with the head). 1 minute measured 40% more compaction time per
# reading (twice the small blocks to write and merge: 38 s against 27 s for 6M readings of
# 8,000 series) for a head of at most ~110,000 rows instead of ~150,000; docs/benchmarks.md,
# "Storage engine".
WINDOW_NS: Final = 120 * 10**9
# Late readings within this much of a window's end still land before it is compacted;
# later ones are merged into the block that covers them by a further call.
GRACE_NS: Final = 30 * 10**9
# Second level: a closed hour's small blocks are merged into one block per series. 1 h holds
# 360 readings of a 10 s series, enough that the per-row overhead (key, summaries) stays
# under a byte per reading; measured in docs/benchmarks.md. store.m0003 indexes the blocks
# shorter than this (the small ones), so the constant is also in that migration.
MERGE_NS: Final = 3_600 * 10**9
# An hour is merged once it ended this long ago: the few late readings for it until then
# go into the small blocks, which are cheaper to rewrite than the hour's block.
MERGE_GRACE_NS: Final = 300 * 10**9
# A window of at most this many head rows is compacted in one step (~0.25 s); 100,000
# holds a 2-minute window of 8,000 series at one reading per 10 s (96,000 rows). Once per
# window, so it barely shows in the ACK latency; larger windows go in steps of STEP_ROWS.
MAX_ROWS_PER_CALL: Final = 100_000
# A backlog's windows are all closed by the clock at once: there the windows of one slot of
# RUN_WINDOWS windows (10 minutes; slots are aligned, RUN_WINDOWS * WINDOW_NS divides
# MERGE_NS) are compacted together once all of them have settled, into one small block per
# series instead of five, up to RUN_MAX_ROWS head rows (~70 MB in memory while encoding).
# Live windows close one at a time and are compacted one at a time as before. Measured
# (bench/bench_window_lock.py --run-windows 5): the write lock is held 0.43 µs per reading
# instead of 0.85 (a fifth of the block inserts), so the writer waits half as long; reading
# and encoding cost the same per reading, and the hour's merge decodes a fifth of the blocks.
RUN_WINDOWS: Final = 5
RUN_MAX_ROWS: Final = 500_000
# Rows one step of a large window (stage, pack, delete) handles: a pack or delete step
# holds the write lock for its write and a batch that arrives meanwhile waits for it. At
# 20,000 a delete held it 5-7 ms (up to 136 ms on a busy host) at 10,000 readings/s;
# 5,000 holds it ~1.5 ms (docs/benchmarks.md, "ACK latency").
STEP_ROWS: Final = 5_000
# Readings one step of a merge handles. A merge step decodes and encodes with no lock held
# and then writes for a few ms, so its size barely shows in the ACK latency; each step
# waits once for the writer's transaction in progress, and 20,000-reading steps left the
# hourly merges behind a 100,000 readings/s backfill (docs/benchmarks.md).
MERGE_STEP_ROWS: Final = 100_000
# A backlog's closed merge window with no blocks yet goes from the head straight into its
# final blocks (CompactionConfig.direct_merge, collector.storage.sqlite.directmerge) when it
# holds at most this many readings: they wait in the maintenance process's memory between
# reading and writing (~17 bytes per numeric reading: collector.storage.sqlite.slicecolumns;
# ~68 MB here); a larger one takes the two levels.
DIRECT_MAX_ROWS: Final = 4_000_000


@dataclass(frozen=True, slots=True)
class CompactionConfig:
    """Window size, grace period for late data, the per-call work bound, and the merge level.

    `merge_ns` 0 means one level: head windows become the final blocks. Otherwise it is a
    multiple of `window_ns`, and closed `merge_ns` windows of small blocks are merged.
    """

    window_ns: int = WINDOW_NS
    grace_ns: int = GRACE_NS
    max_rows: int = MAX_ROWS_PER_CALL
    merge_ns: int = 0
    merge_grace_ns: int = MERGE_GRACE_NS
    step_rows: int = STEP_ROWS
    merge_step_rows: int = MERGE_STEP_ROWS
    run_windows: int = 1
    run_rows: int = RUN_MAX_ROWS
    # A closed, settled merge window with no blocks yet (a backlog) is compacted straight
    # into its final blocks, skipping the small blocks and their merge.
    direct_merge: bool = False
    direct_max_rows: int = DIRECT_MAX_ROWS

    def closed_before(self, now_ns: int) -> int:
        """Start of the oldest window not closed at `now_ns` (it ends within the grace)."""
        return (now_ns - self.grace_ns) // self.window_ns * self.window_ns

    @property
    def run_ns(self) -> int:
        """Length of a slot whose closed, settled windows are compacted together."""
        return self.window_ns * self.run_windows

    @property
    def step(self) -> int:
        """Rows per step of a staged window: step_rows, at most max_rows."""
        return min(self.step_rows, self.max_rows)

    @property
    def merge_step(self) -> int:
        """Readings per step of a merge: merge_step_rows, at most max_rows."""
        return min(self.merge_step_rows, self.max_rows)

    def __post_init__(self) -> None:
        if not 0 < self.window_ns <= codec.MAX_WINDOW_NS:
            raise ValueError(f"window_ns must be in (0, {codec.MAX_WINDOW_NS}]")
        if self.grace_ns < 0 or self.merge_grace_ns < 0:
            raise ValueError("grace_ns and merge_grace_ns must be >= 0")
        bounds = (self.max_rows, self.step_rows, self.merge_step_rows, self.run_rows)
        if min(*bounds, self.direct_max_rows) < 1:
            raise ValueError(
                "max_rows, step_rows, merge_step_rows, run_rows and direct_max_rows must be >= 1"
            )
        if self.run_windows < 1 or self.run_ns > codec.MAX_WINDOW_NS:
            raise ValueError(f"run_windows must be >= 1, window_ns * run_windows <= "
                             f"{codec.MAX_WINDOW_NS}")  # fmt: skip
        if (
            self.merge_ns
            and self.run_windows > 1
            and (self.merge_ns % self.run_ns or self.run_ns >= self.merge_ns)
        ):
            raise ValueError("window_ns * run_windows must divide merge_ns and be shorter")
        if self.merge_ns and (
            self.merge_ns <= self.window_ns
            or self.merge_ns % self.window_ns
            or self.merge_ns > codec.MAX_WINDOW_NS
        ):
            raise ValueError(
                f"merge_ns must be 0 or a multiple of window_ns in ({self.window_ns}, "
                f"{codec.MAX_WINDOW_NS}]"
            )


DEFAULT_CONFIG: Final = CompactionConfig(
    merge_ns=MERGE_NS, run_windows=RUN_WINDOWS, direct_merge=True
)
