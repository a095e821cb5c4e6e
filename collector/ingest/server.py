"""The asyncio ingest server: accept loop and per-connection handler (the only socket code).

Each TCP connection gets one `schemas.wire.Connection` (collector role); this module only
moves bytes between the socket and it. Per connection:

* PROXY header (optional, `proxy_from` given): the connection must come from one of those
  networks and start with a PROXY protocol header (`collector.ingest.proxyheader`), read
  under `handshake_timeout_s`; the client it names replaces the socket's address from then
  on (logs, metrics, per-address limits). Anything else is logged and closed.
* admission: over `max_connections` in all or `max_connections_per_ip` from one source
  address, the connection gets ERROR server_busy (fatal) and is closed.
* TLS (optional): the listener wraps connections with the `ssl_context` it is given; the
  TLS handshake also runs under `handshake_timeout_s`. With mutual TLS, HELLO's device id
  must be one the client certificate names (`collector.tls.cert_device_ids`), checked
  before the token, so a certificate cannot speak for another device.
* handshake: HELLO within `handshake_timeout_s`, authenticated by the writer thread against
  the device registry; a wrong, unknown or revoked token gets ERROR auth_failed (fatal) and
  the socket is closed. The device identity is fixed at HELLO for the connection's life.
* rate limit (optional): a token bucket per device (`max_readings_per_s_per_device`); a
  batch over it is answered RETRY rate_limited with the bucket's wait, storing nothing.
* batches are validated (`collector.ingest.prepare`), submitted to the writer and answered in order
  from the done-callback of each batch's future, once its commit returned: ACK, or RETRY
  when storage failed. Up to
  `max_inflight_batches` may be pipelined; beyond that, or when the writer's credits are
  spent, the handler stops reading and TCP pushes back on the agent.
* every undecodable frame gets an ERROR; the Connection closes the link once its bad-frame
  budget is spent or a declared length is over the limit (the body is never read).
* heartbeats: a PING after `heartbeat_ms` of silence, ERROR idle_timeout after
  `idle_timeout_s`.

Shutdown (`Server.shutdown`): stop accepting, stop reading, answer every batch already
submitted, send BYE, close. No SQL here: storage is `collector.ingest.writer`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import logging
import math
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from collector.config import Limits
from collector.ingest import proxyheader
from collector.ingest.prepare import Ingest
from collector.ingest.writer import STORAGE_UNAVAILABLE, BatchOutcome, Writer
from collector.tls import cert_device_ids
from collector.web.metrics import Metrics
from schemas import errors, wire
from schemas.errors import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

# Bytes asked of the socket per read: a few max-size batches of typical readings.
READ_BYTES = 256 * 1024
# Longest reject message kept when a full ACK would not fit in one frame.
SHORT_REJECT_CHARS = 40
# RETRY reason for a batch over the device's rate limit (docs/protocol.md: receivers treat
# every reason alike: wait retry_after_ms, resend the same batch).
RATE_LIMITED: Final = "rate_limited"
# Bucket size in seconds of the rate: an agent sending one batch a second with some jitter
# is never held back by its own timing, and a burst is at most this many seconds' worth.
RATE_BURST_S: Final = 2.0
# Why a connection that sent nothing at all before closing is dropped (logged at DEBUG).
_CLOSED_BEFORE_HEADER: Final = "closed before sending anything"
_nonces = itertools.count(1)


@dataclass(slots=True, eq=False)
class _Session:
    """State of one accepted connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str
    proto: wire.Connection
    device: str = ""
    device_id: int = 0
    # v1.1: the agent's sequence stream ("" for a v1.0 agent) and this session's epoch.
    stream: str = ""
    epoch: int = 0
    ip: str = ""
    # Identities the verified client certificate names (mutual TLS), else None.
    cert_ids: set[str] | None = None
    # Lowest seq answered RETRY rate_limited and not yet accepted: later batches of this
    # connection wait for it, so k+1 is never committed before k (that would make the
    # resend of k look like a duplicate, docs/protocol.md "One batch in flight").
    blocked_seq: int | None = None
    blocked_readings: int = 0
    rate_limited_logged: bool = False
    stopping: bool = False
    # Set when a newer session of this (device, stream) took over (protocol v1.1).
    superseded: bool = False
    # Batches submitted and not yet answered; the read loop waits on `waiter` for room.
    pending: int = 0
    waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def replaced(self) -> None:
        """A newer session of this (device, stream) took over: tell the agent and close
        (batches it still has in flight are fenced by the writer: not stored)."""
        self.superseded = True
        with contextlib.suppress(LocalProtocolError):
            data = self.proto.send(
                wire.Error(errors.SESSION_REPLACED, "a newer session of this stream connected")
            )
            if not self.writer.is_closing():
                self.writer.write(data)
        self.stop()

    def stop(self) -> None:
        """Stop reading: the handler finishes what it submitted, says BYE and closes."""
        self.stopping = True
        with contextlib.suppress(RuntimeError, AttributeError):
            self.writer.transport.pause_reading()  # type: ignore[attr-defined]  # selector transports
        self.reader.feed_eof()


@dataclass(slots=True)
class _Bucket:
    """A token bucket of readings; may go into debt so a batch larger than it still passes."""

    rate: float  # readings per second
    capacity: float
    tokens: float
    stamp: float  # time.monotonic() of the last refill

    def wait_ms(self, n: int, now: float) -> int:
        """Milliseconds until a batch of `n` readings fits; 0 when it fits now."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        need = min(float(n), self.capacity)
        if self.tokens >= need:
            return 0
        return max(1, math.ceil((need - self.tokens) / self.rate * 1000))

    def take(self, n: int, now: float) -> int:
        """Take `n` readings if they fit (returns 0), else the milliseconds to wait."""
        wait = self.wait_ms(n, now)
        if wait == 0:
            self.tokens -= n
        return wait


class Server:
    """Accepts agent connections and runs one handler per connection."""

    def __init__(
        self,
        writer: Writer,
        ingest: Ingest,
        metrics: Metrics,
        limits: Limits,
        *,
        ssl_context: ssl.SSLContext | None = None,
        proxy_from: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.writer = writer
        # SO_REUSEPORT: several ingest processes listen on one port, the kernel spreads
        # new connections over them (collector.workers).
        self.reuse_port = reuse_port
        # Networks allowed to send a PROXY header; None: no header expected.
        self.proxy_from = None if proxy_from is None else tuple(proxy_from)
        self.ingest = ingest
        self.metrics = metrics
        self.limits = limits
        self.ssl_context = ssl_context
        self.mutual_tls = ssl_context is not None and ssl_context.verify_mode == ssl.CERT_REQUIRED
        self.address: tuple[str, int] | None = None
        self._sessions: set[_Session] = set()
        self._per_ip: dict[str, int] = {}
        # Per device id; a device's bucket outlives its connections (reconnecting does not
        # refill it). One small object per device that ever sent a batch.
        self._buckets: dict[int, _Bucket] = {}
        # The live session of each (device id, stream): a newer HELLO replaces it.
        self._live: dict[tuple[int, str], _Session] = {}
        self._server: asyncio.Server | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._closing = asyncio.Event()

    @property
    def connected(self) -> dict[str, int]:
        """Open connections per device (authenticated sessions only)."""
        out: dict[str, int] = {}
        for s in self._sessions:
            if s.device:
                out[s.device] = out.get(s.device, 0) + 1
        return out

    async def run(self, host: str, port: int, bound: Callable[[tuple[str, int]], None]) -> None:
        """Listen, report the bound address through `bound`, and serve until shutdown()."""
        # Bind outside the TaskGroup so a bind error surfaces as a plain OSError.
        tls: dict[str, object] = {}
        if self.ssl_context is not None:
            tls = {
                "ssl": self.ssl_context,
                "ssl_handshake_timeout": self.limits.handshake_timeout_s,
            }
        self._server = await asyncio.start_server(
            self._accept,
            host,
            port,
            limit=READ_BYTES,
            backlog=4096,
            start_serving=False,
            reuse_port=self.reuse_port or None,
            **tls,  # type: ignore[arg-type]  # ssl / ssl_handshake_timeout, typed per key
        )
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            await self._server.start_serving()
            sock = self._server.sockets[0].getsockname()
            self.address = (str(sock[0]), int(sock[1]))
            bound(self.address)
            if self.proxy_from is not None:
                log.info(
                    "PROXY protocol header required on ingest from=%s",
                    ",".join(str(n) for n in self.proxy_from),
                )
            await self._closing.wait()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tg is None or self._closing.is_set():
            writer.close()
            return
        self._tg.create_task(self._handle(reader, writer))

    async def shutdown(self) -> None:
        """Stop accepting; let each session finish its submitted batches and say BYE."""
        if self._server is not None:
            self._server.close()
        for s in list(self._sessions):
            s.stop()
        self._closing.set()

    # ------------------------------------------------------------------ per connection

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        lim = self.limits
        proto = wire.Connection(
            wire.Role.COLLECTOR,
            max_frame_bytes=lim.max_frame_bytes,
            bad_frame_budget=lim.bad_frame_budget,
            max_send_bytes=wire.MAX_FRAME_BYTES,
        )
        ip = str(peername[0]) if isinstance(peername, tuple) else peer
        s = _Session(reader, writer, peer, proto, ip=ip)
        m = self.metrics
        if self.proxy_from is not None and not await self._proxy_header(s):
            await self._close(s)
            return
        peer, ip = s.peer, s.ip
        if len(self._sessions) >= lim.max_connections:
            busy = "max_connections"
        elif self._per_ip.get(ip, 0) >= lim.max_connections_per_ip:
            busy = "max_connections_per_ip"
        else:
            busy = ""
        if busy:
            m.refused(errors.SERVER_BUSY)
            log.warning("connection refused peer=%s reason=%s", peer, busy)
            message = "too many connections" + (" from this address" if "ip" in busy else "")
            writer.write(proto.send(wire.Error(errors.SERVER_BUSY, message)))
            await self._close(s)
            return
        if self.mutual_tls:
            s.cert_ids = cert_device_ids(writer.get_extra_info("peercert"))
        self._sessions.add(s)
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        m.connections_total += 1
        m.connections_open += 1
        reason = "closed"
        try:
            reason = await self._session(s)
        except (ConnectionError, TimeoutError, OSError) as exc:
            reason = f"socket error: {exc!r}"
        except Exception:
            # A bug met by one connection ends that connection, not the whole server.
            log.exception("connection handler failed device=%s peer=%s", s.device or "-", peer)
            reason = "internal error"
        finally:
            self._sessions.discard(s)
            if self._live.get((s.device_id, s.stream)) is s:
                del self._live[(s.device_id, s.stream)]
            left = self._per_ip.pop(ip, 1) - 1
            if left:
                self._per_ip[ip] = left
            m.connections_open -= 1
            if s.device:
                m.device(s.device).connected -= 1
            await self._close(s)
            log.info("disconnected device=%s peer=%s reason=%s", s.device or "-", peer, reason)

    async def _proxy_header(self, s: _Session) -> bool:
        """Read the PROXY header and take the client address it names; False to close."""
        assert self.proxy_from is not None
        try:
            sock_ip = ipaddress.ip_address(proxyheader.plain_address(s.ip))
        except ValueError:  # not an IP socket
            sock_ip = None
        trusted = sock_ip is not None and any(sock_ip in net for net in self.proxy_from)
        reason = "untrusted address"
        if trusted:
            data = b""
            try:
                async with asyncio.timeout(self.limits.handshake_timeout_s):
                    while True:
                        parsed = proxyheader.parse(data)
                        if isinstance(parsed, proxyheader.Parsed):
                            break
                        chunk = await s.reader.read(proxyheader.V2_MAX_BYTES)
                        if not chunk:
                            raise proxyheader.ProxyHeaderError(
                                _CLOSED_BEFORE_HEADER if not data else "closed mid-header"
                            )
                        data += chunk
            except proxyheader.ProxyHeaderError as exc:
                reason = str(exc)
            except TimeoutError:
                reason = "no PROXY header in time"
            except (ConnectionError, OSError) as exc:
                reason = f"socket error: {exc!r}"
            else:
                src = parsed.header.source
                if src is not None:  # LOCAL / UNKNOWN: the balancer's own connection
                    s.ip = src[0]
                    s.peer = f"{src[0]}:{src[1]}"
                self.metrics.bytes_in += len(data)
                if len(data) > parsed.consumed:  # the wire protocol's first bytes
                    s.proto.receive_data(data[parsed.consumed :])
                via = s.writer.get_extra_info("peername")
                log.debug("PROXY header peer=%s via=%s", s.peer, via)
                return True
        self.metrics.refused("proxy_header")
        if reason == _CLOSED_BEFORE_HEADER:
            # A TCP-level health check or port probe: one line per check would drown the log.
            log.debug("connection closed before a PROXY header peer=%s", s.peer)
        else:
            log.warning("connection refused peer=%s reason=PROXY header: %s", s.peer, reason)
        return False

    async def _close(self, s: _Session) -> None:
        s.writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await s.writer.wait_closed()

    async def _session(self, s: _Session) -> str:
        hello = await self._handshake(s)
        if isinstance(hello, str):
            return hello
        stats = self.metrics.device(s.device)
        stats.connected += 1
        stats.peer = s.peer
        stats.spool_dropped += hello.dropped
        reason = await self._read_loop(s)
        # Every submitted batch is answered before the connection ends (unless the socket
        # failed, or the daemon's shutdown deadline cancels this wait).
        await self._until_pending_below(s, 1)
        if s.superseded:
            return "session replaced"
        if s.stopping and s.proto.state is not wire.State.CLOSED:
            await self._send(s, wire.Bye(errors.SHUTTING_DOWN))
            return "shutdown"
        return reason

    async def _until_pending_below(self, s: _Session, limit: int) -> None:
        while s.pending >= limit:
            s.waiter = asyncio.get_running_loop().create_future()
            try:
                await s.waiter
            finally:
                s.waiter = None

    async def _handshake(self, s: _Session) -> wire.Hello | str:
        """Read and authenticate HELLO; returns it, or why the connection ends."""
        try:
            async with asyncio.timeout(self.limits.handshake_timeout_s):
                event = await self._next_event(s)
                if not isinstance(event, wire.Hello):
                    return event if isinstance(event, str) else "no hello"
                if event.version != wire.PROTOCOL_VERSION:
                    await self._refuse(
                        s,
                        errors.UNSUPPORTED_VERSION,
                        f"protocol version {event.version} is not supported "
                        f"(this collector speaks {wire.PROTOCOL_VERSION})",
                    )
                    return "unsupported version"
                if s.cert_ids is not None and event.device_id not in s.cert_ids:
                    # Checked before the token, so nothing reaches the registry (not even
                    # HELLO's dropped count) for a device this certificate does not name.
                    log.warning(
                        "authentication failed device=%s peer=%s reason=client certificate "
                        "names %s",
                        event.device_id[:64],
                        s.peer,
                        ",".join(sorted(s.cert_ids))[:200] or "nothing",
                    )
                    await self._refuse(
                        s, errors.AUTH_FAILED, "the client certificate does not name this device"
                    )
                    return "auth failed"
                if event.stream and not wire.STREAM_ID_RE.match(event.stream):
                    await self._refuse(
                        s,
                        errors.BAD_MESSAGE,
                        "HELLO.stream must be 1-64 letters, digits, '_', '.', ':' or '-'",
                    )
                    return "bad stream id"
                outcome = await self.writer.hello(
                    event.device_id, event.token, event.dropped, event.stream
                )
        except TimeoutError:
            await self._refuse(s, errors.HANDSHAKE_TIMEOUT, "no HELLO in time")
            return "handshake timeout"
        device = outcome.auth.device
        if device is None:
            code = errors.SERVER_BUSY if outcome.storage_error else errors.AUTH_FAILED
            log.warning(
                "authentication failed device=%s peer=%s reason=%s",
                event.device_id[:64],
                s.peer,
                outcome.auth.reason,
            )
            message = "storage unavailable" if outcome.storage_error else "authentication failed"
            await self._refuse(s, code, message)
            return "auth failed"
        s.device, s.device_id = device.name, device.id
        s.stream, s.epoch = event.stream, outcome.epoch
        old = self._live.get((s.device_id, s.stream))
        self._live[(s.device_id, s.stream)] = s
        if old is not None:
            # One live session per (device, stream) (docs/protocol.md §9): the newest wins.
            # Another collector sharing the store learns it from the epoch at its next commit.
            self.metrics.sessions_replaced += 1
            log.warning(
                "session replaced device=%s stream=%s old_peer=%s new_peer=%s",
                s.device,
                s.stream or "-",
                old.peer,
                s.peer,
            )
            old.replaced()
        lim = self.limits
        await self._send(
            s,
            wire.Welcome(
                last_seq=outcome.last_seq,
                max_frame_bytes=lim.max_frame_bytes,
                max_batch_readings=wire.MAX_BATCH_READINGS,
                heartbeat_ms=lim.heartbeat_ms,
                minor=wire.PROTOCOL_MINOR,
            ),
        )
        log.info(
            "connected device=%s stream=%s peer=%s agent=%s/%s last_seq=%d%s",
            s.device,
            s.stream or "-",
            s.peer,
            event.agent or "-",
            event.agent_version or "-",
            outcome.last_seq,
            " registered=yes" if outcome.auth.registered else "",
        )
        return event

    async def _refuse(self, s: _Session, code: str, message: str) -> None:
        self.metrics.refused(code)
        await self._send(s, wire.Error(code, message, fatal=True))

    async def _next_event(self, s: _Session) -> wire.Event | str:
        """Next event from the peer (answering bad frames), or why the stream ended."""
        while True:
            if s.stopping:
                return "shutdown"
            try:
                event = s.proto.next_event()
            except RemoteProtocolError as exc:
                self.metrics.bad_frames += 1
                # Naming the seq of a bad BATCH lets the agent drop it: it can never be
                # accepted, and every BATCH gets one answer (docs/protocol.md §9).
                await self._send(s, wire.Error(exc.code, exc.message, exc.fatal, exc.seq))
                if exc.fatal:
                    log.warning(
                        "protocol error device=%s peer=%s code=%s message=%s",
                        s.device or "-",
                        s.peer,
                        exc.code,
                        exc.message,
                    )
                    return f"protocol error {exc.code}"
                continue
            if isinstance(event, wire.ConnectionClosed):
                return "peer closed"
            if event is not wire.NEED_DATA:
                return event  # type: ignore[return-value]  # narrowed: not NEED_DATA
            data = await self._read(s)
            if isinstance(data, str):
                return data
            s.proto.receive_data(data)

    async def _read(self, s: _Session) -> bytes | str:
        """Bytes from the socket (b"" at EOF), with heartbeats; a str says why to stop."""
        lim = self.limits
        idle_deadline = time.monotonic() + lim.idle_timeout_s
        heartbeat_s = lim.heartbeat_ms / 1000
        while True:
            wait_s = min(heartbeat_s, idle_deadline - time.monotonic())
            try:
                async with asyncio.timeout(max(wait_s, 0.0)):
                    data = await s.reader.read(READ_BYTES)
            except TimeoutError:
                if time.monotonic() >= idle_deadline:
                    if s.proto.state is wire.State.AWAIT_HELLO:
                        raise  # the handshake deadline applies
                    await self._refuse(s, errors.IDLE_TIMEOUT, "no data from the agent")
                    return "idle timeout"
                if s.proto.state is wire.State.READY:
                    await self._send(s, wire.Ping(next(_nonces)))
                continue
            if s.stopping:
                return "shutdown"
            if data:
                n = len(data)
                self.metrics.bytes_in += n
                if s.device:
                    self.metrics.device(s.device).bytes_in += n
            return data

    async def _read_loop(self, s: _Session) -> str:
        while True:
            event = await self._next_event(s)
            if isinstance(event, str):
                return event
            if isinstance(event, wire.Batch):
                retry_ms = self._rate_limited(s, event)
                if retry_ms:
                    # Answers leave in BATCH order: earlier batches are answered first.
                    await self._until_pending_below(s, 1)
                    await self._send_retry(s, event.seq, retry_ms)
                    continue
                await self._until_pending_below(s, self.limits.max_inflight_batches)
                t0 = time.perf_counter()
                batch = self.ingest.prepare(event.seq, event.readings, time.time_ns(), event.groups)
                fut = await self.writer.submit(s.device_id, batch, stream=s.stream, epoch=s.epoch)
                s.pending += 1
                fut.add_done_callback(functools.partial(self._answer, s, t0))
                # ACKs are written from the callback; waiting here for the socket's write
                # buffer keeps a peer that does not read them from growing it.
                async with asyncio.timeout(self.limits.write_timeout_s):
                    await s.writer.drain()
            elif isinstance(event, wire.Ping):
                await self._send(s, wire.Pong(event.nonce))
            elif isinstance(event, wire.Bye):
                return f"agent said bye ({event.reason[:64]})"
            elif isinstance(event, wire.Error):
                log.warning(
                    "agent reported error device=%s peer=%s code=%s message=%s",
                    s.device,
                    s.peer,
                    event.code[:64],
                    event.message[:200],
                )
                if event.fatal:
                    return "agent error"

    def _rate_limited(self, s: _Session, batch: wire.Batch) -> int:
        """Milliseconds the batch must wait under the device's rate limit; 0 to go ahead."""
        rate = self.limits.max_readings_per_s_per_device
        if not rate:
            return 0
        now = time.monotonic()
        bucket = self._buckets.get(s.device_id)
        if bucket is None:
            cap = rate * RATE_BURST_S
            bucket = self._buckets[s.device_id] = _Bucket(float(rate), cap, cap, now)
        n = batch.size
        if s.blocked_seq is not None and batch.seq > s.blocked_seq:
            # An earlier batch must go first: wait as long as it has to.
            return max(1, bucket.wait_ms(s.blocked_readings, now))
        wait = bucket.take(n, now)
        if wait == 0:
            s.blocked_seq = None
            return 0
        s.blocked_seq, s.blocked_readings = batch.seq, n
        if not s.rate_limited_logged:
            s.rate_limited_logged = True
            log.warning(
                "rate limiting device=%s peer=%s limit_per_s=%d retry_after_ms=%d",
                s.device,
                s.peer,
                rate,
                wait,
            )
        return wait

    async def _send_retry(self, s: _Session, seq: int, retry_ms: int) -> None:
        m = self.metrics
        stats = m.device(s.device)
        m.batches += 1
        stats.batches += 1
        m.retries += 1
        stats.retries += 1
        log.debug("batch device=%s seq=%d rate_limited retry_after_ms=%d", s.device, seq, retry_ms)
        await self._send(s, wire.Retry(seq, RATE_LIMITED, retry_ms))

    def _answer(self, s: _Session, t0: float, fut: asyncio.Future[BatchOutcome]) -> None:
        """Done-callback of a submitted batch: write its ACK or RETRY.

        The writer resolves futures in submission order, so answers leave in BATCH order.
        """
        s.pending -= 1
        s.wake()
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.error("batch failed device=%s peer=%s error=%r", s.device, s.peer, exc)
            s.writer.close()
            return
        outcome = fut.result()
        m = self.metrics
        stats = m.device(s.device)
        m.batches += 1
        stats.batches += 1
        if outcome.fenced:
            # A newer session of this stream exists (maybe on another collector): nothing
            # of this batch was stored; the agent reconnects and resumes from WELCOME.
            if s.proto.state is not wire.State.CLOSED:
                log.warning(
                    "session fenced device=%s stream=%s peer=%s seq=%d",
                    s.device,
                    s.stream or "-",
                    s.peer,
                    outcome.seq,
                )
                self._write(
                    s,
                    wire.Error(
                        errors.SESSION_REPLACED,
                        "a newer session of this stream connected; batch not stored",
                        True,
                        outcome.seq,
                    ),
                )
                s.superseded = True
                s.stop()
            return
        if outcome.retry_after_ms is not None:
            m.retries += 1
            stats.retries += 1
            self._write(s, wire.Retry(outcome.seq, STORAGE_UNAVAILABLE, outcome.retry_after_ms))
            return
        rejected = len(outcome.rejects)
        m.accepted += outcome.accepted
        m.duplicate += outcome.duplicate
        m.rejected += rejected
        stats.accepted += outcome.accepted
        stats.duplicate += outcome.duplicate
        stats.rejected += rejected
        log.debug(
            "batch device=%s seq=%d accepted=%d duplicate=%d rejected=%d",
            s.device,
            outcome.seq,
            outcome.accepted,
            outcome.duplicate,
            rejected,
        )
        self._write(s, wire.Ack(outcome.seq, outcome.accepted, outcome.duplicate, outcome.rejects))
        m.batch_seconds.observe(time.perf_counter() - t0)

    async def _send(self, s: _Session, event: wire.Event) -> None:
        """Write an event, with a deadline on a peer that does not read."""
        self._write(s, event)
        async with asyncio.timeout(self.limits.write_timeout_s):
            await s.writer.drain()

    def _write(self, s: _Session, event: wire.Event) -> None:
        """Encode through the Connection and hand the bytes to the transport."""
        try:
            data = s.proto.send(event)
        except LocalProtocolError:
            if isinstance(event, wire.Ack) and s.proto.state is not wire.State.CLOSED:
                try:
                    data = s.proto.send(_shortened(event, SHORT_REJECT_CHARS))
                except LocalProtocolError:
                    # Still too large (multi-byte text): keep codes and paths, drop messages.
                    data = s.proto.send(_shortened(event, SHORT_REJECT_CHARS, 0))
            elif s.proto.state is wire.State.CLOSED and isinstance(event, wire.Ack | wire.Retry):
                # The agent said BYE with batches still in flight: answer them anyway.
                data = wire.encode(event)
            else:
                raise
        if not s.writer.is_closing():
            s.writer.write(data)


def _shortened(ack: wire.Ack, path_chars: int, message_chars: int | None = None) -> wire.Ack:
    """The same ACK with reject paths and messages cut short, so it fits in one frame
    (docs/protocol.md §8: a collector frame is never over MAX_FRAME_BYTES)."""
    msg_chars = path_chars if message_chars is None else message_chars
    rejects = tuple(
        wire.Reject(r.index, r.code, r.path[:path_chars], r.message[:msg_chars])
        for r in ack.rejects
    )
    return wire.Ack(ack.seq, ack.accepted, ack.duplicate, rejects)
