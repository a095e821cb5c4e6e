"""In-process counters of the collector and their Prometheus text rendering.

Counters are plain integers updated from the event-loop thread only (the writer thread
reports commit latency through the outcome it hands back), so no locks are needed. Values
live for the process lifetime; durable per-device state (last seq, last seen) is in the
database. This module does no I/O: `collector.web.http` serves `render()`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collector.storage.interface import StorageStats

# Commit latency buckets in seconds: an fsync'd group commit costs ~0.2-5 ms on a local
# disk; the upper buckets catch checkpoints and storage stalls.
COMMIT_BUCKETS_S: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


@dataclass(slots=True)
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


@dataclass(slots=True)
class DeviceStats:
    """What one device did since the collector started."""

    connected: int = 0
    peer: str = ""
    batches: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicate: int = 0
    retries: int = 0
    bytes_in: int = 0
    spool_dropped: int = 0


@dataclass(slots=True)
class Metrics:
    connections_open: int = 0
    connections_total: int = 0
    connections_refused: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicate: int = 0
    retries: int = 0
    bad_frames: int = 0
    sessions_replaced: int = 0
    bytes_in: int = 0
    commits: int = 0
    commit_seconds: Histogram = field(default_factory=lambda: Histogram(COMMIT_BUCKETS_S))
    # BATCH decoded -> its ACK written: the collector's share of the agent's ACK latency.
    batch_seconds: Histogram = field(default_factory=lambda: Histogram(COMMIT_BUCKETS_S))
    devices: dict[str, DeviceStats] = field(default_factory=dict)
    queue_depth: Callable[[], int] = lambda: 0
    # Times the maintenance process had to be started again (the storage's background work).
    maintainer_restarts: Callable[[], int] = lambda: 0

    def snapshot(self) -> Metrics:
        """A copy that pickles (another process's /metrics adds it up, `add`): the
        callables are read now and kept as constants."""
        copy = Metrics(maintainer_restarts=_Constant(self.maintainer_restarts()))
        copy.add(self)
        copy.queue_depth = _Constant(self.queue_depth())
        return copy

    def add(self, other: Metrics) -> None:
        """Add `other`'s counters, histograms and gauges to these (one sum over ingest
        processes); the maintainer restarts are this object's own."""
        for name in _INT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, n in other.connections_refused.items():
            self.connections_refused[reason] = self.connections_refused.get(reason, 0) + n
        for mine, theirs in (
            (self.commit_seconds, other.commit_seconds),
            (self.batch_seconds, other.batch_seconds),
        ):
            mine.counts = [a + b for a, b in zip(mine.counts, theirs.counts, strict=True)]
            mine.total += theirs.total
            mine.count += theirs.count
        for name, theirs_d in other.devices.items():
            mine_d = self.device(name)
            for f in _DEVICE_INT_FIELDS:
                setattr(mine_d, f, getattr(mine_d, f) + getattr(theirs_d, f))
            mine_d.peer = mine_d.peer or theirs_d.peer
        depth, more = self.queue_depth, other.queue_depth
        self.queue_depth = lambda: depth() + more()

    def device(self, name: str) -> DeviceStats:
        stats = self.devices.get(name)
        if stats is None:
            stats = self.devices[name] = DeviceStats()
        return stats

    def refused(self, reason: str) -> None:
        self.connections_refused[reason] = self.connections_refused.get(reason, 0) + 1

    def render(self, storage: StorageStats | None = None) -> str:
        """The Prometheus text exposition format (version 0.0.4); the storage gauges when
        `storage` is given (the caller reads them from the file)."""
        out: list[str] = []

        def metric(name: str, mtype: str, help_: str, samples: Sequence[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {mtype}")
            for labels, value in samples:
                out.append(f"{name}{labels} {_num(value)}")

        metric(
            "telemetry_connections_open",
            "gauge",
            "Open agent connections.",
            [("", self.connections_open)],
        )
        metric(
            "telemetry_connections_total",
            "counter",
            "Agent connections accepted.",
            [("", self.connections_total)],
        )
        metric(
            "telemetry_connections_refused_total",
            "counter",
            "Agent connections refused or closed by the collector, by reason.",
            [(_labels(reason=r), n) for r, n in sorted(self.connections_refused.items())],
        )
        metric("telemetry_batches_total", "counter", "BATCH frames answered.",
               [("", self.batches)])  # fmt: skip
        # One family per meaning: the collector-wide count has no labels, the per-device
        # series are a family of their own (telemetry_device_*), so sum() of either family
        # counts every reading once.
        for what in ("accepted", "rejected", "duplicate"):
            metric(
                f"telemetry_readings_{what}_total",
                "counter",
                f"Readings {what}, all devices.",
                [("", getattr(self, what))],
            )
        metric("telemetry_retries_total", "counter", "Batches answered with RETRY.",
               [("", self.retries)])  # fmt: skip
        metric("telemetry_bad_frames_total", "counter", "Frames that failed to decode.",
               [("", self.bad_frames)])  # fmt: skip
        metric("telemetry_sessions_replaced_total", "counter",
               "Sessions closed because a newer HELLO of the same device and stream arrived.",
               [("", self.sessions_replaced)])  # fmt: skip
        metric(
            "telemetry_bytes_in_total",
            "counter",
            "Bytes received from agents, including those before a device identified itself.",
            [("", self.bytes_in)],
        )
        devices = sorted(self.devices.items())
        for what in ("accepted", "rejected", "duplicate"):
            metric(
                f"telemetry_device_readings_{what}_total",
                "counter",
                f"Readings {what}, per device.",
                [(_labels(device=d), getattr(s, what)) for d, s in devices],
            )
        metric(
            "telemetry_device_bytes_in_total",
            "counter",
            "Bytes received per device, from its HELLO on.",
            [(_labels(device=d), s.bytes_in) for d, s in devices],
        )
        metric("telemetry_writer_queue_depth", "gauge", "Batches waiting for the writer.",
               [("", self.queue_depth())])  # fmt: skip
        for name, h, help_ in (
            ("telemetry_commit_seconds", self.commit_seconds, "Group-commit latency."),
            (
                "telemetry_batch_seconds",
                self.batch_seconds,
                "From a BATCH decoded to its ACK written.",
            ),
        ):
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} histogram")
            cumulative = 0
            for bound, n in zip(h.buckets, h.counts, strict=False):
                cumulative += n
                out.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
            out.append(f'{name}_bucket{{le="+Inf"}} {h.count}')
            out.append(f"{name}_sum {_num(h.total)}")
            out.append(f"{name}_count {h.count}")
        metric(
            "telemetry_device_connected",
            "gauge",
            "Open connections per device.",
            [(_labels(device=d), s.connected) for d, s in devices],
        )
        metric(
            "telemetry_maintainer_restarts_total",
            "counter",
            "Times the maintenance process exited and was started again.",
            [("", self.maintainer_restarts())],
        )
        if storage is not None:
            oldest = storage.head_oldest_ns
            gauges: list[tuple[str, str, float | None]] = [
                (
                    "telemetry_head_rows",
                    "Readings in the head, not compacted yet.",
                    storage.head_rows,
                ),
                (
                    "telemetry_head_oldest_timestamp_seconds",
                    "Timestamp of the head's oldest reading (absent when the head is empty); "
                    "for live data, time() minus this is how far compaction is behind.",
                    None if oldest is None else oldest / 1e9,
                ),
                ("telemetry_blocks", "Compacted blocks.", storage.blocks),
                (
                    "telemetry_small_blocks",
                    "Blocks not merged into their hour yet.",
                    storage.small_blocks,
                ),
                ("telemetry_db_bytes", "Size of the database file.", storage.db_bytes),
                ("telemetry_wal_bytes", "Size of the write-ahead log.", storage.wal_bytes),
                (
                    "telemetry_db_free_bytes",
                    "Free pages kept in the database file.",
                    storage.free_bytes,
                ),
            ]
            for name, help_, gauge in gauges:
                metric(name, "gauge", help_, [] if gauge is None else [("", gauge)])
        return "\n".join(out) + "\n"


class _Constant:
    """A callable returning one number, that pickles (Metrics.snapshot)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __call__(self) -> int:
        return self.value


_INT_FIELDS: Final = tuple(
    f for f in Metrics.__dataclass_fields__ if Metrics.__dataclass_fields__[f].type == "int"
)
_DEVICE_INT_FIELDS: Final = tuple(
    f for f in DeviceStats.__dataclass_fields__ if DeviceStats.__dataclass_fields__[f].type == "int"
)


def _labels(**kv: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in kv.items())
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))
