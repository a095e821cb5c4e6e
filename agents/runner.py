"""Wire the agent together: sources -> spool -> transport, plus the one-shot dry run.

`Runner.run()` polls every input on its interval (a failing input is logged and retried on
its next interval and never stops the others), stores each sample in the spool (waiting for
space under the `block` policy) and nudges the transport, which seals and sends batches.
All long-lived tasks live in one TaskGroup. `reload()` (SIGHUP, through `request_reload`)
re-reads the config and applies what `agents.reload.plan` allows: changed inputs restart,
unchanged ones and the spool stay, and the connection stays unless its own settings
changed; a config that does not load keeps the running one, with one error line.
`dry_run()` reads every input once and returns the
readings without touching the spool or the network (`telemetry agent --once --dry-run`).

No sockets here (that is `agents.transport`), no SQL (that is `agents.spool`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agents import reload as reloading
from agents.config import AgentConfig, AgentConfigError, InputConfig
from agents.sources import Source, SourceContext, SourceError, build
from agents.spool import Spool
from agents.transport import Transport
from schemas.wire import Reading

log = logging.getLogger(__name__)
reload_log = logging.getLogger("agents.reload")

# Reads the config file again and builds its inputs; raises AgentConfigError.
ConfigReader = Callable[[], tuple[AgentConfig, list[tuple[InputConfig, Source]]]]


class DeviceRefused(Exception):
    """A one-shot run (`once`) ended because the collector refused the device id or token.

    Waiting cannot fix that, so `--once` stops instead of retrying (the long-running agent
    keeps retrying at its backoff cap: the registry may be fixed meanwhile)."""


@dataclass(slots=True)
class InputStats:
    samples: int = 0
    readings: int = 0
    errors: int = 0
    failing: bool = False


@dataclass(slots=True)
class _Input:
    cfg: InputConfig
    source: Source
    stats: InputStats = field(default_factory=InputStats)
    task: asyncio.Task[None] | None = None


def build_inputs(
    cfg: AgentConfig, ctx: SourceContext | None = None
) -> list[tuple[InputConfig, Source]]:
    """Construct every configured source; raises AgentConfigError naming the bad table."""
    if ctx is None:
        base = cfg.source_file.parent if cfg.source_file is not None else Path()
        ctx = SourceContext(base_dir=base)
    return [(inp, build(inp, ctx, file=cfg.source_file)) for inp in cfg.inputs]


async def dry_run(
    cfg: AgentConfig, ctx: SourceContext | None = None
) -> list[tuple[InputConfig, list[Reading] | SourceError]]:
    """Read every input once: its readings, or the error of its failed read."""
    out: list[tuple[InputConfig, list[Reading] | SourceError]] = []
    for inp, src in build_inputs(cfg, ctx):
        try:
            out.append((inp, await src.read()))
        except SourceError as exc:
            out.append((inp, exc))
    return out


class Runner:
    """Runs the configured inputs and the transport over one spool."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        spool: Spool | None = None,
        ctx: SourceContext | None = None,
        with_inputs: bool = True,
        reader: ConfigReader | None = None,
    ) -> None:
        self.cfg = cfg
        self._reader = reader
        self._reload_requested = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._transport_task: asyncio.Task[None] | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self._tls_files = b""
        self._inputs = [_Input(c, s) for c, s in build_inputs(cfg, ctx)] if with_inputs else []
        self._own_spool = spool is None
        self.spool = spool
        self.transport: Transport | None = None
        self._space = asyncio.Event()
        self._queued = asyncio.Event()
        self._queue: list[tuple[Sequence[object], asyncio.Future[None]]] = []

    @property
    def input_stats(self) -> dict[str, InputStats]:
        return {i.cfg.label: i.stats for i in self._inputs}

    async def run(self, *, once: bool = False) -> None:
        """Run until cancelled; with `once`, sample every input once and return when sent."""
        if self.spool is None:
            self.spool = await asyncio.to_thread(
                Spool,
                self.cfg.spool_path,
                max_readings=self.cfg.spool_max_readings,
                policy=self.cfg.spool_policy,
            )
        spool = self.spool
        transport = self.transport = Transport(self.cfg, spool)
        loop = asyncio.get_running_loop()

        def space_freed() -> None:
            loop.call_soon_threadsafe(self._space.set)

        spool.add_space_listener(space_freed)
        log.info(
            "agent starting device_id=%s inputs=%d spool=%s pending=%d",
            self.cfg.device_id,
            len(self._inputs),
            self.cfg.spool_path,
            len(spool),
        )
        self._queue = []
        refused = ""
        try:
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(self._spool_writer(spool))
                if once:
                    refused = await self._run_once(spool, transport)
                    writer.cancel()
                else:
                    self._tg = tg
                    self._tls_files = await asyncio.to_thread(reloading.tls_files, self.cfg.tls)
                    self._transport_task = tg.create_task(transport.run())
                    for inp in self._inputs:
                        self._start_input(inp, spool)
                    self._start_metrics(spool)
                    tg.create_task(self._reloads(spool))
        finally:
            self._tg = None
            spool.remove_space_listener(space_freed)
            if self._own_spool:
                await asyncio.to_thread(spool.close)
        if refused:
            # Raised outside the TaskGroup so it arrives as itself, not in an ExceptionGroup.
            c = self.cfg
            raise DeviceRefused(
                f"the collector at {c.host}:{c.port} refused device {c.device_id!r} "
                f"({refused}): check device_id and the token (telemetry devices add/list)"
            )

    async def _run_once(self, spool: Spool, transport: Transport) -> str:
        """Sample every input once and send; returns why the collector refused the device
        ('' when everything was acknowledged)."""
        for inp in self._inputs:
            await self._sample(inp, spool)
        refused = ""
        async with asyncio.TaskGroup() as tg:
            sender = tg.create_task(transport.run())
            while len(spool):
                # The transport retries a refused HELLO at its backoff cap; its counter is
                # what tells a one-shot run to give up.
                if transport.stats.auth_failures:
                    refused = transport.stats.last_error or "auth_failed"
                    break
                # Polled as well as awaited: progress may land between the check and the wait.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await transport.wait_progress()
            sender.cancel()
        return refused

    def _start_input(self, inp: _Input, spool: Spool) -> None:
        assert self._tg is not None
        inp.task = self._tg.create_task(self._poll(inp, spool))

    def _start_metrics(self, spool: Spool) -> None:
        assert self._tg is not None
        if self.cfg.metrics_interval_s:
            self._metrics_task = self._tg.create_task(
                self._self_metrics(self.cfg.metrics_interval_s, spool)
            )

    def request_reload(self) -> None:
        """Read the config again soon (a signal handler may call this)."""
        self._reload_requested.set()

    async def _reloads(self, spool: Spool) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            if self._reader is None:
                reload_log.info("reloaded config: nothing to read (no config file)")
                continue
            try:
                cfg, built, tls_files = await asyncio.to_thread(self._read_config)
            except AgentConfigError as exc:
                reload_log.error("reload failed, keeping the running config: %s", exc)
                continue
            except ImportError:  # ssl, kept out of an agent started without TLS (agents.cli)
                reload_log.error(
                    "reload failed, keeping the running config: turning [tls] on needs a "
                    "restart (this agent started without TLS)"
                )
                continue
            await self.reload(cfg, built, spool, tls_files=tls_files)

    def _read_config(self) -> tuple[AgentConfig, list[tuple[InputConfig, Source]], bytes]:
        """The config, its inputs and its TLS files' contents (in a worker thread)."""
        assert self._reader is not None
        cfg, built = self._reader()
        return cfg, built, reloading.tls_files(cfg.tls)

    async def reload(
        self,
        cfg: AgentConfig,
        built: Sequence[tuple[InputConfig, Source]],
        spool: Spool,
        *,
        tls_files: bytes | None = None,
    ) -> str:
        """Apply a re-read config (see agents.reload); returns the logged summary line.

        `tls_files`: `agents.reload.tls_files` of the new config (None: not compared)."""
        changed = tls_files is not None and tls_files != self._tls_files
        p = reloading.plan(self.cfg, cfg, tls_files_changed=changed)
        if tls_files is not None and (p.reconnect or not p.cfg.tls.enabled):
            self._tls_files = tls_files
        old = self._inputs
        stopped = [old[i] for i in p.stopped]
        for inp in stopped:
            if inp.task is not None:
                inp.task.cancel()
        inputs = [
            old[m] if m is not None else _Input(icfg, src)
            for (icfg, src), m in zip(built, p.inputs, strict=True)
        ]
        self._inputs = inputs
        self.cfg = p.cfg
        for inp, m in zip(inputs, p.inputs, strict=True):
            if m is None:
                self._start_input(inp, spool)
        if p.metrics:
            if self._metrics_task is not None:
                self._metrics_task.cancel()
                self._metrics_task = None
            self._start_metrics(spool)
        old_transport = self.transport
        if p.reconnect and old_transport is not None:
            # The same spool: what the old connection had in flight is resent after WELCOME.
            if self._transport_task is not None:
                self._transport_task.cancel()
                await asyncio.wait([self._transport_task])
            transport = Transport(p.cfg, spool)
            transport.stats = old_transport.stats  # counters go on across the reconnect
            self.transport = transport
            assert self._tg is not None
            self._transport_task = self._tg.create_task(transport.run())
        elif p.batch and old_transport is not None:
            old_transport.cfg = p.cfg
        reload_log.info("reloaded config: %s", p.summary)
        return p.summary

    async def _poll(self, inp: _Input, spool: Spool) -> None:
        interval = inp.cfg.interval_s
        next_at = time.monotonic()
        while True:
            await self._sample(inp, spool)
            if getattr(inp.source, "exhausted", False):
                log.info("input finished its sample count input=%s", inp.cfg.label)
                return
            next_at += interval
            now = time.monotonic()
            if next_at < now:  # overran (slow command, suspended host): skip, do not burst
                next_at = now + interval - (now - next_at) % interval
            await asyncio.sleep(next_at - now)

    async def _sample(self, inp: _Input, spool: Spool) -> None:
        st = inp.stats
        try:
            readings = await inp.source.read()
        except SourceError as exc:
            self._failed(inp, str(exc))
            return
        except Exception as exc:
            # Issue 4: a failing input never stops the others. A plugin bug is logged with
            # its traceback and the input is retried on its next interval.
            log.exception("input raised unexpectedly input=%s", inp.cfg.label)
            self._failed(inp, repr(exc), logged=True)
            return
        if st.failing:
            log.info("input recovered input=%s after_errors=%d", inp.cfg.label, st.errors)
            st.failing = False
        st.samples += 1
        st.readings += len(readings)
        if readings:
            await self.store([r.to_wire() for r in readings])

    def _failed(self, inp: _Input, reason: str, *, logged: bool = False) -> None:
        st = inp.stats
        st.errors += 1
        if not st.failing and not logged:
            log.warning(
                "input failed, retrying every interval input=%s error=%s", inp.cfg.label, reason
            )
        else:
            log.debug("input still failing input=%s error=%s", inp.cfg.label, reason)
        st.failing = True

    def metric_readings(self, spool: Spool, transport: Transport) -> list[Reading]:
        """The agent's own counters as readings: spool depth, drops, rejects, input errors."""
        ts = time.time_ns()
        st = spool.stats()
        ts_ = transport.stats
        out = [
            Reading("agent/spool_pending", "gauge", ts, float(st.pending + st.sealed)),
            Reading("agent/dropped", "counter", ts, st.dropped_total),
            Reading("agent/rejected", "counter", ts, st.rejected_total),
            Reading("agent/acked", "counter", ts, st.acked_readings),
            Reading("agent/reconnects", "counter", ts, ts_.disconnects),
            Reading("agent/connected", "state", ts, transport.connected),
        ]
        for inp in self._inputs:
            out.append(
                Reading(
                    "agent/input_errors",
                    "counter",
                    ts,
                    inp.stats.errors,
                    None,
                    {"input": inp.cfg.label},
                )
            )
        return out

    async def _self_metrics(self, interval_s: float, spool: Spool) -> None:
        while True:
            await asyncio.sleep(interval_s)
            transport = self.transport
            assert transport is not None
            readings = await asyncio.to_thread(self.metric_readings, spool, transport)
            await self.store([r.to_wire() for r in readings])

    async def store(self, wire: Sequence[object]) -> None:
        """Hand readings to the spool writer; returns once they are on disk."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((wire, done))
        self._queued.set()
        await done

    async def _spool_writer(self, spool: Spool) -> None:
        # Inputs on the same interval tick together; one transaction (and one worker-thread
        # hop) for all of their samples instead of one each keeps the agent's CPU low.
        while True:
            await self._queued.wait()
            self._queued.clear()
            items, self._queue = self._queue, []
            rest = [r for wire, _ in items for r in wire]
            while rest:
                self._space.clear()
                n = await asyncio.to_thread(spool.put, rest)
                rest = rest[n:]
                if self.transport is not None:  # the current one: a reload may replace it
                    self.transport.notify()
                if rest:  # block policy: wait for an ACK to free space
                    await self._space.wait()
            for _, done in items:
                if not done.done():
                    done.set_result(None)
