"""What a re-read agent config changes, for SIGHUP (no asyncio; only `tls_files` reads).

`plan(running, new)` sorts the differences:
* inputs and `metrics_interval`: applied (changed inputs restart, unchanged ones keep
  running, so a `count`-limited input does not start over);
* `[batch]`: applied to the running connection (`max_delay_ms` now, `max_readings` from the
  next connection on);
* collector address, token, `[tls]` (its settings, or the contents of its files: a renewed
  certificate), heartbeat, timeouts, backoff: applied by reconnecting with the same spool
  (unacknowledged batches are resent, as after any reconnect);
* `device_id` and `[spool]`: not applied, they need a restart: the spool's sequence numbers
  belong to one device on one file. They keep their running values.
`agents.runner.Runner.reload` carries the plan out and logs `summary` in one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from agents.config import AgentConfig, InputConfig, TlsConfig

# (field, how the config file names it)
_CONNECTION = (
    ("tls", "[tls]"),
    ("heartbeat_ms", "collector.heartbeat_ms"),
    ("connect_timeout_s", "collector.connect_timeout_ms"),
    ("backoff_initial_s", "collector.backoff_initial_ms"),
    ("backoff_max_s", "collector.backoff_max_ms"),
)
_BATCH = (("batch_max_readings", "batch.max_readings"), ("batch_max_delay_s", "batch.max_delay"))
_RESTART_ONLY = (
    ("device_id", "device_id"),
    ("spool_path", "spool.path"),
    ("spool_max_readings", "spool.max_readings"),
    ("spool_policy", "spool.policy"),
)


@dataclass(frozen=True, slots=True)
class Plan:
    cfg: AgentConfig  # what the agent runs with afterwards
    reconnect: bool
    batch: bool
    metrics: bool
    # For each new input: the index of the running input it equals (kept), or None (start).
    inputs: tuple[int | None, ...]
    stopped: tuple[int, ...]  # running inputs that go
    summary: str


def plan(running: AgentConfig, new: AgentConfig, *, tls_files_changed: bool = False) -> Plan:
    """Compare the running config with a newly read one; see the module docstring.

    `tls_files_changed`: the certificate files' contents differ from those in use."""
    done: list[str] = []
    not_applied = [
        f"{label} {_show(getattr(running, name))} -> {_show(getattr(new, name))}"
        for name, label in _RESTART_ONLY
        if getattr(running, name) != getattr(new, name)
    ]
    effective = dataclasses.replace(
        new, **{name: getattr(running, name) for name, _ in _RESTART_ONLY}
    )

    matches, stopped, text = _inputs(running.inputs, new.inputs)
    if text:
        done.append(text)
    metrics = running.metrics_interval_s != new.metrics_interval_s
    if metrics:
        done.append(
            f"metrics_interval {_secs(running.metrics_interval_s)} -> "
            f"{_secs(new.metrics_interval_s)}"
        )
    batch = [
        f"{label} {_show(getattr(running, n))} -> {_show(getattr(new, n))}"
        for n, label in _BATCH
        if getattr(running, n) != getattr(new, n)
    ]
    done += batch
    link: list[str] = []
    if running.addresses != new.addresses:
        link.append(f"collector {_hosts(running)} -> {_hosts(new)}")
    if running.token != new.token:
        link.append("token changed")
    link += [
        f"{label} changed" for n, label in _CONNECTION if getattr(running, n) != getattr(new, n)
    ]
    if tls_files_changed and running.tls == new.tls:
        link.append("[tls] files changed")
    if link:
        done.append(", ".join(link) + ": reconnecting")
    summary = "; ".join(done) if done else "nothing changed"
    if not_applied:
        summary += "; not applied, needs a restart: " + ", ".join(not_applied)
    return Plan(effective, bool(link), bool(batch), metrics, matches, stopped, summary)


def _hosts(cfg: AgentConfig) -> str:
    return ",".join(f"{h}:{p}" for h, p in cfg.addresses)


def _inputs(
    old: Sequence[InputConfig], new: Sequence[InputConfig]
) -> tuple[tuple[int | None, ...], tuple[int, ...], str]:
    free = list(range(len(old)))
    matches: list[int | None] = []
    for inp in new:
        hit = next((i for i in free if old[i] == inp), None)
        if hit is not None:
            free.remove(hit)
        matches.append(hit)
    started = [new[j].label for j, m in enumerate(matches) if m is None]
    gone = {old[i].label for i in free}
    parts = [("~" if label in gone else "+") + label for label in started]
    parts += ["-" + label for label in sorted(gone - set(started))]
    kept = sum(m is not None for m in matches)
    text = f"inputs {' '.join(parts)} (kept {kept})" if parts else ""
    return tuple(matches), tuple(free), text


def _secs(v: float | None) -> str:
    return "off" if v is None else f"{v:g}s"


def _show(v: object) -> str:
    return f"{v:g}s" if isinstance(v, float) else str(v)  # floats here are seconds


def tls_files(tls: TlsConfig) -> bytes:
    """The contents of the TLS files in use (empty when TLS is off), to notice a renewal.

    Reads files: call it from a worker thread."""
    if not tls.enabled:
        return b""
    out = b""
    for path in (tls.ca_file, tls.cert_file, tls.key_file):
        data = b""
        if path is not None:
            try:
                data = path.read_bytes()
            except OSError:
                data = b"\0unreadable"
        out += len(data).to_bytes(8, "big") + data
    return out
