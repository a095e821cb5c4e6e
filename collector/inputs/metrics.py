"""Counters of the foreign inputs (collector.inputs.influx_http, collector.inputs.fluent_server).

Each input owns one instance and bumps it on the event loop; collector.inputs.listeners
renders both as Prometheus text, on `GET /metrics` with the collector's own counters and on
`GET /metrics/inputs` alone. Plain integers: no locks, no I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(slots=True)
class InfluxMetrics:
    """Counters of the line-protocol input since start (rendered on /metrics/inputs)."""

    requests: int = 0
    bytes_in: int = 0
    lines: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    status: dict[int, int] = dataclasses.field(default_factory=dict)

    def answered(self, status: int) -> None:
        self.status[status] = self.status.get(status, 0) + 1

    def render(self) -> str:
        p = "telemetry_input_influx"
        lines = [
            f"# TYPE {p}_requests_total counter",
            f"{p}_requests_total {self.requests}",
            f"# TYPE {p}_bytes_total counter",
            f"{p}_bytes_total {self.bytes_in}",
            f"# TYPE {p}_lines_total counter",
            f"{p}_lines_total {self.lines}",
            f"# TYPE {p}_readings_total counter",
            f'{p}_readings_total{{outcome="accepted"}} {self.accepted}',
            f'{p}_readings_total{{outcome="duplicate"}} {self.duplicate}',
            f'{p}_readings_total{{outcome="rejected"}} {self.rejected}',
            f"# TYPE {p}_responses_total counter",
        ]
        lines += [f'{p}_responses_total{{code="{c}"}} {n}' for c, n in sorted(self.status.items())]
        return "\n".join(lines) + "\n"


@dataclass(slots=True)
class ForwardMetrics:
    """Counters of the forward input since start (rendered on /metrics/inputs)."""

    connections: int = 0
    open: int = 0
    auth_failed: int = 0
    bytes_in: int = 0
    messages: int = 0
    bad_messages: int = 0
    events: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    unauthenticated: int = 0
    acks: int = 0
    storage_failures: int = 0

    def render(self) -> str:
        p = "telemetry_input_forward"
        counters = {
            "connections_total": self.connections,
            "auth_failed_total": self.auth_failed,
            "bytes_total": self.bytes_in,
            "messages_total": self.messages,
            "bad_messages_total": self.bad_messages,
            "events_total": self.events,
            "unauthenticated_events_total": self.unauthenticated,
            "acks_total": self.acks,
            "storage_failures_total": self.storage_failures,
        }
        lines = [f"# TYPE {p}_connections_open gauge", f"{p}_connections_open {self.open}"]
        for name, v in counters.items():
            lines += [f"# TYPE {p}_{name} counter", f"{p}_{name} {v}"]
        lines += [
            f"# TYPE {p}_readings_total counter",
            f'{p}_readings_total{{outcome="accepted"}} {self.accepted}',
            f'{p}_readings_total{{outcome="duplicate"}} {self.duplicate}',
            f'{p}_readings_total{{outcome="rejected"}} {self.rejected}',
        ]
        return "\n".join(lines) + "\n"
