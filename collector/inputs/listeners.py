"""The foreign inputs, wired together: InfluxDB writes over HTTP and the Fluent forward listener.

`Inputs.build` reads the `inputs` mapping file and creates both inputs for the daemon;
`register` adds the HTTP write routes and `GET /metrics/inputs` (Prometheus text: each
input's counters) to the collector's aiohttp app; `start`/`stop` run the forward listener
when `forward_listen` is set. No protocol code here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from collector.config import Config
from collector.errors import ConfigError
from collector.ingest.prepare import Ingest
from collector.ingest.writer import Writer
from collector.inputs.fluent_server import ForwardServer
from collector.inputs.influx_http import InfluxInput
from collector.inputs.mapping import load_inputs

log = logging.getLogger(__name__)

METRICS_PATH: Final = "/metrics/inputs"


@dataclass
class Inputs:
    influx: InfluxInput
    forward: ForwardServer | None = None
    _task: asyncio.Task[None] | None = None

    @classmethod
    def build(
        cls, cfg: Config, writer: Writer, ingest: Ingest, ssl_context: ssl.SSLContext | None
    ) -> Inputs:
        """Both inputs as `cfg` sets them up. Raises ConfigError for a bad inputs file."""
        mapping = load_inputs(cfg.inputs, tuple(ingest.validator.kinds))
        influx = InfluxInput(writer, ingest, writer.storage, mapping.influx)
        forward = None
        if cfg.forward_addr is not None:
            forward = ForwardServer(
                writer,
                ingest,
                writer.storage,
                mapping.forward,
                ssl_context=ssl_context,
                handshake_timeout_s=cfg.limits.handshake_timeout_s,
                idle_timeout_s=cfg.limits.idle_timeout_s,
                max_connections=cfg.limits.max_connections,
                max_connections_per_ip=cfg.limits.max_connections_per_ip,
            )
        return cls(influx, forward)

    def register(self, app: web.Application) -> None:
        self.influx.register(app)
        app.router.add_get(METRICS_PATH, self._metrics)

    def render_metrics(self) -> str:
        """Both inputs' counters as Prometheus text (also part of the collector's /metrics)."""
        text = self.influx.metrics.render()
        if self.forward is not None:
            text += self.forward.metrics.render()
        return text

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.render_metrics(), content_type="text/plain", charset="utf-8")

    async def start(self, addr: tuple[str, int] | None) -> str:
        """Start the forward listener when configured; returns its address or "off".

        Raises ConfigError when it cannot listen."""
        if self.forward is None or addr is None:
            return "off"
        loop = asyncio.get_running_loop()
        bound: asyncio.Future[tuple[str, int]] = loop.create_future()
        self._task = asyncio.create_task(self.forward.run(*addr, bound.set_result), name="forward")
        waiting: list[asyncio.Future[Any]] = [bound, self._task]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not bound.done():
            try:
                await self._task
            except OSError as exc:
                raise ConfigError(
                    f"setting 'forward_listen': cannot listen on {addr[0]}:{addr[1]}: {exc}"
                ) from None
        host, port = bound.result()
        return f"{host}:{port}"

    async def stop(self, timeout_s: float) -> None:
        """Stop the forward listener: connections finish the message in hand, then close."""
        if self.forward is None or self._task is None:
            return
        await self.forward.shutdown()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        except Exception:
            # The listener failed; the rest of the collector still shuts down cleanly.
            log.exception("forward listener failed")
