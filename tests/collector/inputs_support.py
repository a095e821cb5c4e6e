"""Test helpers for the foreign inputs: a collector subprocess with them on, and readbacks.

    with InputsCollector(tmp_path, forward=True) as d:   # python -m collector collector
        token = d.add_device("dev-1")
        d.http, d.forward                                  # bound (host, port) pairs
        stored_rows(d.db, "dev-1")                         # what is stored, each reading once
        dead_letters(d.db, "dev-1")                        # the dead-letter rows

Only loopback addresses; the daemon's bound ports come from its `listening` log line.
Import: `from tests.collector.inputs_support import InputsCollector, stored_rows`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

from collector.storage.sqlite import scan, store
from tests.collector.wireclient import CollectorProcess

FORWARD_RE = re.compile(r"listening ingest=\S+ http=\S+ forward=(\S+):(\d+)")


class Row(NamedTuple):
    sensor: str
    kind: str
    unit: str
    tags: dict[str, str]
    ts: int
    value: object


class Dead(NamedTuple):
    seq: int
    idx: int
    code: str
    path: str
    message: str
    reading: object


class InputsCollector(CollectorProcess):
    """The real daemon with the InfluxDB write routes, and the forward listener if asked."""

    def __init__(
        self,
        tmp: Path,
        *,
        forward: bool = False,
        inputs_toml: str | None = None,
        limits: dict[str, float] | None = None,
        **kw: str,
    ) -> None:
        lines = []
        if forward:
            lines.append('forward_listen = "127.0.0.1:0"')
        if inputs_toml is not None:
            path = tmp / "inputs.toml"
            path.write_text(inputs_toml)
            lines.append(f'inputs = "{path}"')
        lines += [f"{k} = {json.dumps(v)}" for k, v in kw.items()]
        if limits:
            lines.append("[limits]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in limits.items()]
        cfg = tmp / "collector.toml"
        cfg.write_text("\n".join(lines) + "\n")
        super().__init__(tmp / "t.db", "--config", str(cfg))
        self.forward: tuple[str, int] = ("", 0)

    def start(self, timeout: float = 30.0) -> InputsCollector:
        super().start(timeout)
        m = FORWARD_RE.search(self.log)
        if m:
            self.forward = (m.group(1), int(m.group(2)))
        return self

    def __enter__(self) -> InputsCollector:
        return self.start()


def stored_rows(db: Path, device: str) -> list[Row]:
    """Every reading stored for `device` (head and blocks, each once), by (sensor, ts)."""
    conn = store.connect(db, readonly=True)
    try:
        meta = {
            int(sid): (str(sensor), str(kind), str(unit), json.loads(tags))
            for sid, sensor, kind, unit, tags in conn.execute(
                "SELECT s.id, s.sensor, s.kind, s.unit, s.tags FROM series s "
                "JOIN devices d ON d.id = s.device_id WHERE d.name = ?",
                (device,),
            )
        }
        out = [
            Row(*meta[sid], ts, value)
            for sid, ts, value in scan.read_range(conn, sorted(meta), None, None)
        ]
    finally:
        conn.close()
    return sorted(out, key=lambda r: (r.sensor, r.ts, json.dumps(r.tags, sort_keys=True)))


def dead_letters(db: Path, device: str) -> list[Dead]:
    """The dead-letter rows of `device`, oldest first."""
    conn = store.connect(db, readonly=True)
    try:
        rows = conn.execute(
            "SELECT r.seq, r.idx, r.code, r.path, r.message, r.reading FROM rejected r "
            "JOIN devices d ON d.id = r.device_id WHERE d.name = ? ORDER BY r.id",
            (device,),
        ).fetchall()
    finally:
        conn.close()
    return [
        Dead(int(s), int(i), str(c), str(p), str(m), json.loads(r)) for s, i, c, p, m, r in rows
    ]
