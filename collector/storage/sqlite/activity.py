"""Which time windows are still receiving readings: the compactor's "is it quiet yet?".

The writer reports each stored batch's timestamps (`Activity.note`, or through
collector.storage.sqlite.maintainer, which sends the window keys to the maintenance process's
`Activity.touch`); the compactor asks `window_settled` / `merge_settled` before it compacts
a head window or merges an hour.

Why: the compactor closes windows by its wall clock, which is right for live data (a window
stops receiving readings when it ends) but wrong for a backlog: devices replaying hours of
spooled readings fill windows that are long closed by the clock. Compacting a window while
it fills, or merging an hour while its later windows still arrive, makes every later step
decode and re-encode the blocks just written (measured: 77% of the writer's time went to
compaction and ingest halved over 20M readings, docs/benchmarks.md). A window is settled
once no reading for it arrived for `quiet_s`, or `max_wait_s` after its first reading since
it was last compacted, so a window that never stops trickling still moves.

State lives in memory only: after a restart every window counts as settled, which costs
at most a merge of a few late readings into a block, never a reading.

Times are `time.monotonic()` seconds; window keys are start timestamps in ns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final

# A window is compacted once no reading arrived for it for this long (and it is closed by
# the clock). Live windows stop receiving readings when they end, long before the grace
# period closes them, so this only matters for backlogs.
QUIET_S: Final = 5.0
# ... or this long after its first reading since it was last compacted.
MAX_WAIT_S: Final = 60.0
# An hour's small blocks are merged once none of its windows received a reading for this
# long: a merged hour's block is re-encoded whole for every late window that follows.
MERGE_QUIET_S: Final = 30.0
MERGE_MAX_WAIT_S: Final = 600.0
# Windows still filling that one compaction call skips to find a settled one.
MAX_WINDOWS_SKIPPED: Final = 1_000
# A batch spanning more windows than this is noted reading by reading, not as a range.
_RANGE_WINDOWS: Final = 64


class Activity:
    """First and last time readings were stored for each window and each merge window."""

    def __init__(
        self,
        window_ns: int,
        merge_ns: int,
        *,
        quiet_s: float = QUIET_S,
        max_wait_s: float = MAX_WAIT_S,
        merge_quiet_s: float = MERGE_QUIET_S,
        merge_max_wait_s: float = MERGE_MAX_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_ns = window_ns
        self.merge_ns = merge_ns
        self.quiet_s = quiet_s
        self.max_wait_s = max_wait_s
        self.merge_quiet_s = merge_quiet_s
        self.merge_max_wait_s = merge_max_wait_s
        self._clock = clock
        # start ns -> [first, last] monotonic seconds
        self._windows: dict[int, list[float]] = {}
        self._merges: dict[int, list[float]] = {}
        self._last: float | None = None  # when readings were last stored

    def note(self, timestamps: Sequence[int]) -> None:
        """Readings with these timestamps were just stored (called by the writer)."""
        if timestamps:
            self.touch(window_keys(timestamps, self.window_ns))

    def touch(self, keys: Iterable[int]) -> None:
        """Readings were just stored in the windows starting at `keys` (see window_keys)."""
        keys = set(keys)
        now = self._clock()
        self._last = now
        _touch(self._windows, keys, now)
        if self.merge_ns:
            m = self.merge_ns
            _touch(self._merges, {k - k % m for k in keys}, now)

    def quiet(self) -> bool:
        """True when no readings were stored for quiet_s (or none since the start)."""
        return self._last is None or self._clock() - self._last >= self.quiet_s

    def window_settled(self, start_ns: int) -> bool:
        """True once the window starting at `start_ns` may be compacted."""
        return _settled(self._windows.get(start_ns), self._clock(), self.quiet_s, self.max_wait_s)

    def merge_settled(self, start_ns: int) -> bool:
        """True once the merge window starting at `start_ns` may be merged."""
        return _settled(
            self._merges.get(start_ns), self._clock(), self.merge_quiet_s, self.merge_max_wait_s
        )

    def merge_quiet(self, start_ns: int) -> bool:
        """True once no reading arrived in the merge window starting at `start_ns` for
        merge_quiet_s, or max_wait_s after its first since it was last merged: a replay is
        then done with it (or stopped in it), as far as waiting can tell."""
        return _settled(
            self._merges.get(start_ns), self._clock(), self.merge_quiet_s, self.max_wait_s
        )

    def compacted(self, start_ns: int) -> None:
        """The window was compacted: its next reading starts a new wait."""
        self._windows.pop(start_ns, None)

    def merged(self, start_ns: int) -> None:
        """The merge window was merged: its next reading starts a new wait."""
        self._merges.pop(start_ns, None)

    def prune(self) -> None:
        """Forget quiet windows: they count as settled either way."""
        now = self._clock()
        for table, quiet_s in ((self._windows, self.quiet_s), (self._merges, self.merge_quiet_s)):
            stale = [k for k, (_first, last) in table.items() if now - last >= quiet_s]
            for k in stale:
                del table[k]

    def __len__(self) -> int:
        return len(self._windows) + len(self._merges)


def window_keys(timestamps: Sequence[int], window_ns: int) -> Sequence[int] | set[int]:
    """Start timestamps of the windows of `window_ns` that `timestamps` fall in."""
    if not timestamps:
        return ()
    w = window_ns
    lo, hi = min(timestamps) // w, max(timestamps) // w
    if hi - lo < _RANGE_WINDOWS:
        return range(lo * w, (hi + 1) * w, w)
    return {t // w * w for t in timestamps}


def _touch(table: dict[int, list[float]], keys: Iterable[int], now: float) -> None:
    for k in keys:
        entry = table.get(k)
        if entry is None:
            table[k] = [now, now]
        else:
            entry[1] = now


def _settled(entry: list[float] | None, now: float, quiet_s: float, max_wait_s: float) -> bool:
    return entry is None or now - entry[1] >= quiet_s or now - entry[0] >= max_wait_s
