"""When the writer thread runs its next maintenance step (collector.ingest.writer.Maintenance).

Only for a maintenance hook run in the writer thread (`serve(maintenance=...)`); the daemon
runs compaction in a process of its own (collector.storage.sqlite.maintainer), which needs no
pacing.

The maintenance hook (compaction, retention, free-page reclaim) does one bounded step at a
time and says whether more is waiting. An idle writer runs steps back to back. Under load it
runs them after a group commit while it has credit, earned at a share of its time; the
share grows while work keeps waiting, so a backlog of compaction turns into backpressure
on ingest rather than a head that grows for ever. With nothing waiting, the hook is only
polled, once per interval. Pure timekeeping: no SQLite, no threads.
"""

from __future__ import annotations

import time
from typing import Final

# Under load, maintenance steps get this share of the writer's time: after a group commit
# the writer runs steps while it has credit (earned at the share, at most
# MAINTENANCE_BURST_S saved up, so a batch waits for about that plus one step); an idle
# writer runs them back to back. While work stays waiting the share grows to
# MAINTENANCE_MAX_SHARE over MAINTENANCE_RAMP_S, so ingest slows (backpressure) rather than
# compaction falling behind for good: at a fixed 45% a backlog replay ingested 54k
# readings/s while the head grew by 130k rows per 1M readings and no hour was merged
# (docs/benchmarks.md, "End-to-end ingest").
MAINTENANCE_SHARE: Final = 0.45
MAINTENANCE_MAX_SHARE: Final = 0.9
MAINTENANCE_RAMP_S: Final = 30.0
MAINTENANCE_BURST_S: Final = 0.1
# Until work has waited this long without a break, batches that arrived during a step are
# committed before the next step (a batch waits for at most one step); after it, steps
# run on while credit lasts, which a backlog's merges need to keep up (one step per group
# commit merged ~27k readings/s against the ~43k/s a replay needed).
MAINTENANCE_DEBT_S: Final = 10.0


class MaintenanceClock:
    """When the writer thread runs its next maintenance step.

    Under load a step needs credit, earned at `share()` seconds per second up to
    MAINTENANCE_BURST_S and spent by the steps' run time; idle steps cost nothing. With no
    work waiting, the next step is only a poll, once per interval.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        now = time.monotonic()
        self.pending = False
        self.pending_since = now
        self.next_poll = now  # first step at start: catch up with what a restart left
        self.credit = MAINTENANCE_BURST_S
        self.credited_at = now

    def idle_wait_s(self) -> float:
        """How long to wait for a batch before running a step on an idle queue."""
        if self.pending:
            return 0.0
        return max(0.0, self.next_poll - time.monotonic())

    def share(self, now: float) -> float:
        """MAINTENANCE_SHARE, growing while work has been waiting without a break."""
        if not self.pending:
            return MAINTENANCE_SHARE
        ramp = min(1.0, (now - self.pending_since) / MAINTENANCE_RAMP_S)
        return MAINTENANCE_SHARE + (MAINTENANCE_MAX_SHARE - MAINTENANCE_SHARE) * ramp

    def due_under_load(self) -> bool:
        now = time.monotonic()
        earned = (now - self.credited_at) * self.share(now)
        self.credit = min(MAINTENANCE_BURST_S, self.credit + earned)
        self.credited_at = now
        if not self.pending:
            # A poll: at least once per interval, credit or not, so the hook always runs.
            return now >= self.next_poll
        return self.credit > 0

    def in_debt(self, now: float) -> bool:
        """Work has been waiting for MAINTENANCE_DEBT_S without a break."""
        return self.pending and now - self.pending_since >= MAINTENANCE_DEBT_S

    def ran(self, t0: float, t1: float, *, more: bool, loaded: bool) -> None:
        if more and not self.pending:
            self.pending_since = t0
        self.pending = more
        if not more:
            self.next_poll = t1 + self.interval_s
        if loaded:
            self.credit -= t1 - t0
