"""A Python API so user code can record readings directly.

    from agents.api import Agent

    with Agent.create(collector="collector.local:7878", device_id="greenhouse-1",
                      token="...", spool_path="/var/lib/telemetry/spool.db") as agent:
        agent.record("greenhouse/air-temp", kind="temperature", value=21.5, unit="C")

`record` is synchronous and thread-safe: the reading is in the on-disk spool when it
returns (under the `block` policy it waits for space first). The agent's event loop runs in
one background thread started by `start()` (or `with`), sending what is spooled and, with
`run_inputs=True`, polling the config's inputs too. Readings recorded before `start()` wait
in the spool. No sockets here: the transport does the network I/O.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Self

from agents.config import AgentConfig, SpoolPolicy, load_config
from agents.runner import Runner
from agents.sources import source_names
from agents.spool import Spool, SpoolStats
from schemas.wire import Reading, WireValue


class Agent:
    """One device's agent, embedded in a Python program."""

    def __init__(self, config: AgentConfig, *, run_inputs: bool = False) -> None:
        self.config = config
        self._run_inputs = run_inputs
        self._spool = Spool(
            config.spool_path, max_readings=config.spool_max_readings, policy=config.spool_policy
        )
        self._runner: Runner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @classmethod
    def from_file(cls, path: str | Path, *, run_inputs: bool = True) -> Self:
        """An agent configured by a TOML file (raises AgentConfigError)."""
        return cls(load_config(path, known_sources=source_names()), run_inputs=run_inputs)

    @classmethod
    def create(
        cls,
        *,
        collector: str,
        device_id: str,
        token: str,
        spool_path: str | Path,
        spool_max_readings: int = 100_000,
        spool_policy: SpoolPolicy = "drop-oldest",
        **options: object,
    ) -> Self:
        """An agent without a config file; `options` are further AgentConfig fields."""
        host, _, port = collector.rpartition(":")
        cfg = AgentConfig(
            device_id=device_id,
            token=token,
            host=host,
            port=int(port),
            spool_path=Path(spool_path),
            spool_max_readings=spool_max_readings,
            spool_policy=spool_policy,
        )
        return cls(replace(cfg, **options))  # type: ignore[arg-type]  # checked by dataclass

    def record(
        self,
        sensor: str,
        *,
        kind: str,
        value: WireValue,
        unit: str | None = None,
        tags: Mapping[str, str] | None = None,
        ts_ns: int | None = None,
    ) -> None:
        """Spool one reading (timestamp: now unless given) for sending."""
        ts = time.time_ns() if ts_ns is None else ts_ns
        wire = [Reading(sensor, kind, ts, value, unit, tags).to_wire()]
        while not self._spool.put(wire):
            self._spool.wait_for_space(timeout=1.0)
        if self._runner is not None and self._runner.transport is not None:
            self._runner.transport.notify_threadsafe()

    def start(self) -> None:
        """Start sending in a background thread (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name="telemetry-agent", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            self._runner = Runner(self.config, spool=self._spool, with_inputs=self._run_inputs)
            self._ready.set()
            await self._runner.run()

        try:
            asyncio.run(run())
        except asyncio.CancelledError:
            pass  # close() cancelled the agent: the normal way to stop
        except BaseException as exc:  # surfaced by close(): the thread has nobody else to tell
            self._error = exc
        finally:
            self._ready.set()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the collector has acknowledged everything spooled; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._spool):
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    @property
    def connected(self) -> bool:
        t = self._runner.transport if self._runner is not None else None
        return bool(t is not None and t.connected)

    def stats(self) -> SpoolStats:
        return self._spool.stats()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the background thread and close the spool; unsent readings stay on disk."""
        if self._thread is not None:
            if self._loop is not None and self._task is not None:
                self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(timeout)
            self._thread = None
        self._spool.close()
        if self._error is not None:
            raise RuntimeError("the agent thread failed") from self._error

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
