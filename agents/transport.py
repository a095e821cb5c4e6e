"""The agent's TCP client: connect, authenticate, resume, resend, stream; reconnect forever.

One session per TCP connection:
  1. connect (under `connect_timeout`), send HELLO with the spool's unreported dropped count;
  2. WELCOME.last_seq: batches with seq <= last_seq are committed, the spool deletes them;
  3. resend every sealed, unacknowledged batch in seq order, then seal and send new ones;
  4. ACK deletes the batch (its rejected readings are logged and counted, never resent);
     RETRY waits retry_after_ms and sends the same batch again; a non-fatal ERROR naming the
     batch's seq (protocol v1.1: it can never be accepted as sent) drops it, counted as
     dropped and reported in the next HELLO.
HELLO carries the spool's stream id (v1.1): seq numbers and WELCOME.last_seq are per
(device, stream), so a new spool starts a new sequence. A fatal ERROR session_replaced (a
newer connection of the same stream took over) ends the session like any fatal error.
To a collector that announces protocol 1.2 (WELCOME.minor >= 2) a batch travels as a GBATCH:
its readings grouped by series (`schemas.wire.group_readings`), which costs the collector
less CPU per reading; to an older one, as a BATCH. The spool keeps the readings either way,
so a batch can be resent in the other form after a reconnect.
One batch is in flight at a time: commits then happen in seq order, which keeps
WELCOME.last_seq a true resume point.

Heartbeats: a PING every heartbeat period (the smaller of WELCOME.heartbeat_ms and the
config's); no byte from the collector for 2 periods + 1 s means the link is dead, so a dead
link is detected within ~2 heartbeat periods. Every network wait is under `asyncio.timeout`.
Between sessions: jittered exponential backoff from backoff_initial to backoff_max; after
`auth_failed` straight to backoff_max, with an ERROR log line saying what to fix.

Failover ([collector] addresses, for sites without a load balancer): after a failed connect
or a lost session the next address is tried at once; the backoff delay comes once per full
round, i.e. when every address has failed since the last session that reached WELCOME (or
since the start). The agent stays on whichever collector works; the session rule of
protocol v1.1 (the newest HELLO of a stream fences older sessions, through the shared store)
makes it safe to move while batches were in flight on the old one.

TLS ([tls] enabled): the connection is wrapped with `agents.tls.client_context`, checking
the collector's certificate against `server_name` (default: the collector host); a refused
certificate ends the session with a log line saying what to check. `ssl` is imported only
then, so an agent without TLS never loads it.

Moves bytes only: all protocol logic is `schemas.wire.Connection`; spool calls that touch the
disk run in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

from agents import AGENT_NAME, __version__
from agents.config import AgentConfig
from agents.spool import SealedBatch, Spool
from schemas import errors
from schemas.errors import LocalProtocolError, RemoteProtocolError
from schemas.wire import (
    GROUPS_MINOR,
    HANDSHAKE_TIMEOUT_S,
    NEED_DATA,
    Ack,
    Batch,
    Bye,
    Connection,
    ConnectionClosed,
    Error,
    Event,
    Hello,
    Ping,
    Pong,
    Retry,
    Role,
    Welcome,
    group_readings,
)

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)

READ_CHUNK_BYTES: Final = 64 * 1024
# Rejects described in the log per batch; the rest are only counted.
MAX_REJECTS_LOGGED: Final = 3


class LinkDown(Exception):
    """The session ended: the connection failed, timed out, or the collector closed it."""


class AuthFailed(LinkDown):
    """The collector refused the device id or token."""


@dataclass(slots=True)
class TransportStats:
    connects: int = 0
    disconnects: int = 0
    auth_failures: int = 0
    batches_sent: int = 0
    batches_acked: int = 0
    resends: int = 0
    retries: int = 0
    batches_dropped: int = 0
    readings_acked: int = 0
    readings_rejected: int = 0
    readings_duplicate: int = 0
    last_error: str = ""


class _Link:
    """The live parts of one session."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: Connection,
        heartbeat_s: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.heartbeat_s = heartbeat_s
        # ACK, RETRY, or a non-fatal ERROR naming a batch (v1.1).
        self.responses: asyncio.Queue[Ack | Retry | Error] = asyncio.Queue()
        self.nonce = 0

    @property
    def idle_timeout_s(self) -> float:
        return 2 * self.heartbeat_s + 1.0

    async def send(self, event: Event) -> None:
        try:
            self.writer.write(self.conn.send(event))
            async with asyncio.timeout(self.idle_timeout_s):
                await self.writer.drain()
        except TimeoutError:
            raise LinkDown(f"write stalled for {self.idle_timeout_s:g} s") from None
        except OSError as exc:
            raise LinkDown(f"write failed: {exc}") from None


class Transport:
    """Keeps one device's spool flowing to the collector, forever."""

    def __init__(self, cfg: AgentConfig, spool: Spool, *, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.spool = spool
        self.stats = TransportStats()
        self.connected = False
        self._rng = rng or random.Random()
        self._attempt = 0
        # Index into cfg.addresses of the collector tried next (or connected to now).
        self._index = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl_context: ssl.SSLContext | None = None

    # -- signals from producers

    def notify(self) -> None:
        """New readings are in the spool (call from the event loop's thread)."""
        self._wake.set()

    def notify_threadsafe(self) -> None:
        """New readings are in the spool (call from any thread)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def wait_progress(self) -> None:
        """Return after the next ACK or resume changed the spool."""
        self._progress.clear()
        await self._progress.wait()

    # -- the reconnect loop

    def backoff_s(self) -> float:
        """The next reconnect delay: exponential in the attempt number, jittered, capped."""
        base = min(
            self.cfg.backoff_max_s, self.cfg.backoff_initial_s * 2.0 ** min(self._attempt, 30)
        )
        return base / 2 + self._rng.uniform(0, base / 2)

    @property
    def address(self) -> tuple[str, int]:
        """The collector address in use, or tried next."""
        addresses = self.cfg.addresses
        return addresses[self._index % len(addresses)]

    async def run(self) -> None:
        """Connect, stream, and reconnect with backoff until cancelled."""
        self._loop = asyncio.get_running_loop()
        round_start = self._index
        while True:
            host, port = self.address
            target = f"{host}:{port}"
            connects = self.stats.connects
            refused = False
            try:
                await self._session(host, port)
            except* AuthFailed as eg:
                refused = True
                self.stats.auth_failures += 1
                self._attempt = 1 << 10  # straight to the cap: retrying fast will not help
                self._note_down(eg.exceptions[0])
                log.error(
                    "collector refused this device, check device_id and token "
                    "device_id=%s collector=%s reason=%s",
                    self.cfg.device_id,
                    target,
                    eg.exceptions[0],
                )
            except* (LinkDown, OSError, TimeoutError, RemoteProtocolError) as eg:
                self._note_down(eg.exceptions[0])
                log.warning(
                    "collector link down collector=%s reason=%s", target, _reason(eg.exceptions[0])
                )
            count = len(self.cfg.addresses)
            if self.stats.connects != connects:
                round_start = self._index % count  # that one worked: a new round starts
            self._index = (self._index + 1) % count
            nxt = "{}:{}".format(*self.address)
            if self._index != round_start and not refused:
                log.info("trying the next collector collector=%s", nxt)
                continue
            delay = self.backoff_s()
            self._attempt += 1
            log.info("reconnecting in %.1f s collector=%s", delay, nxt)
            await asyncio.sleep(delay)

    def _note_down(self, exc: BaseException) -> None:
        if self.connected:
            self.stats.disconnects += 1
        self.connected = False
        self.stats.last_error = _reason(exc)

    async def _session(self, host: str, port: int) -> None:
        try:
            async with asyncio.timeout(self.cfg.connect_timeout_s):
                reader, writer = await self._connect(host, port)
        except TimeoutError:
            raise LinkDown(f"connect timed out after {self.cfg.connect_timeout_s:g} s") from None
        try:
            conn = Connection(Role.AGENT)
            welcome, dropped = await self._handshake(reader, writer, conn)
            hb_ms = welcome.heartbeat_ms
            if self.cfg.heartbeat_ms:
                hb_ms = min(hb_ms, self.cfg.heartbeat_ms)
            link = _Link(reader, writer, conn, max(hb_ms, 50) / 1000)
            await asyncio.to_thread(self.spool.mark_dropped_reported, dropped)
            committed = await asyncio.to_thread(self.spool.resume, welcome.last_seq)
            self._attempt = 0
            self.connected = True
            self.stats.connects += 1
            self._progress.set()
            log.info(
                "connected collector=%s:%d device_id=%s stream=%s last_seq=%d "
                "already_committed=%d reported_dropped=%d",
                host,
                port,
                self.cfg.device_id,
                self.spool.stream_id or "-",
                welcome.last_seq,
                committed,
                dropped,
            )
            max_batch = min(self.cfg.batch_max_readings, welcome.max_batch_readings)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read_loop(link))
                tg.create_task(self._send_loop(link, max_batch))
                tg.create_task(self._heartbeat_loop(link))
        finally:
            writer.close()

    async def _connect(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open the TCP connection, wrapped in TLS when [tls] is enabled."""
        cfg = self.cfg
        if not cfg.tls.enabled:
            return await asyncio.open_connection(host, port)
        import ssl

        from agents.tls import client_context

        if self._ssl_context is None:
            # Loaded once: the files were already checked when the config was read.
            t = cfg.tls
            self._ssl_context = client_context(t.ca_file, t.cert_file, t.key_file)
        name = cfg.tls.server_name or host
        try:
            return await asyncio.open_connection(
                host, port, ssl=self._ssl_context, server_hostname=name
            )
        except ssl.SSLCertVerificationError as exc:
            raise LinkDown(
                f"TLS: the collector's certificate was refused ({exc.verify_message}); "
                f"check [tls] ca_file and server_name (checked name: {name})"
            ) from None
        except ssl.SSLError as exc:
            raise LinkDown(
                f"TLS handshake with the collector failed: {exc.reason or exc}"
            ) from None

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection
    ) -> tuple[Welcome, int]:
        dropped = await asyncio.to_thread(self.spool.take_unreported_dropped)
        hello = Hello(
            device_id=self.cfg.device_id,
            token=self.cfg.token,
            agent=AGENT_NAME,
            agent_version=__version__,
            dropped=dropped,
            stream=self.spool.stream_id,
        )
        writer.write(conn.send(hello))
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                await writer.drain()
                while True:
                    for event in _events(conn):
                        match event:
                            case Welcome():
                                return event, dropped
                            case Error(code=errors.AUTH_FAILED):
                                raise AuthFailed(f"{event.code}: {event.message}")
                            case Error() | Bye():
                                raise LinkDown(f"refused: {event!r}")
                            case Ping():
                                writer.write(conn.send(Pong(event.nonce)))
                    data = await reader.read(READ_CHUNK_BYTES)
                    conn.receive_data(data)
        except TimeoutError:
            raise LinkDown(f"no WELCOME within {HANDSHAKE_TIMEOUT_S:g} s") from None

    async def _read_loop(self, link: _Link) -> None:
        while True:
            try:
                async with asyncio.timeout(link.idle_timeout_s):
                    data = await link.reader.read(READ_CHUNK_BYTES)
            except TimeoutError:
                raise LinkDown(
                    f"no data from the collector for {link.idle_timeout_s:g} s (dead link)"
                ) from None
            link.conn.receive_data(data)
            for event in _events(link.conn):
                match event:
                    case Ack() | Retry():
                        link.responses.put_nowait(event)
                    case Ping():
                        await link.send(Pong(event.nonce))
                    case Pong():
                        pass
                    case Error(code=errors.AUTH_FAILED):
                        raise AuthFailed(f"{event.code}: {event.message}")
                    case Error(fatal=True):
                        raise LinkDown(f"collector error {event.code}: {event.message}")
                    case Error(seq=seq) if seq:
                        link.responses.put_nowait(event)  # the answer to that batch
                    case Error():
                        log.warning("collector error code=%s message=%s", event.code, event.message)
                    case Bye():
                        raise LinkDown(f"collector said goodbye: {event.reason}")

    async def _heartbeat_loop(self, link: _Link) -> None:
        while True:
            await asyncio.sleep(link.heartbeat_s)
            link.nonce += 1
            await link.send(Ping(link.nonce))

    async def _send_loop(self, link: _Link, max_batch: int) -> None:
        pending = await asyncio.to_thread(self.spool.sealed_batches)
        if pending:
            log.info(
                "resending unacknowledged batches count=%d first_seq=%d",
                len(pending),
                pending[0].seq,
            )
        for batch in pending:
            self.stats.resends += 1
            await self._deliver(link, batch)
        while True:
            batch = await self._next_batch(max_batch)
            await self._deliver(link, batch)

    async def _next_batch(self, max_batch: int) -> SealedBatch:
        while True:
            self._wake.clear()
            # `due` only reads in-memory state: safe on the loop.
            wait = self.spool.due(max_batch, self.cfg.batch_max_delay_s)
            if wait == 0.0:
                batch = await asyncio.to_thread(self.spool.seal, max_batch)
                if batch is not None:
                    return batch
                continue
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass  # the oldest pending reading is now due

    async def _deliver(self, link: _Link, batch: SealedBatch) -> None:
        ack_timeout_s = 3 * link.heartbeat_s + 1.0
        event, order = _wire_batch(batch, link.conn.peer_minor)
        while True:
            try:
                await link.send(event)
            except LocalProtocolError as exc:
                # A batch the protocol cannot carry can never be sent; dropping it silently
                # would hide data loss, so the session ends loudly and the operator sees it.
                raise LinkDown(f"cannot send batch seq={batch.seq}: {exc}") from None
            self.stats.batches_sent += 1
            resp = await self._response(link, batch.seq, ack_timeout_s)
            if isinstance(resp, Error):
                # The collector can never accept this batch as it is: resending it would
                # stall the stream forever. Dropped, counted, and said in the log.
                n = await asyncio.to_thread(self.spool.drop_batch, batch.seq)
                self.stats.batches_dropped += 1
                log.error(
                    "collector refused a batch, dropping it seq=%d readings=%d code=%s message=%s",
                    batch.seq,
                    n,
                    resp.code,
                    resp.message,
                )
                self._progress.set()
                return
            if isinstance(resp, Retry):
                self.stats.retries += 1
                log.debug(
                    "collector asked to retry seq=%d reason=%s after_ms=%d",
                    resp.seq,
                    resp.reason,
                    resp.retry_after_ms,
                )
                await asyncio.sleep(resp.retry_after_ms / 1000)
                continue
            self._on_ack(batch, resp, order)
            await asyncio.to_thread(self.spool.ack, batch.seq, len(resp.rejects))
            self._progress.set()
            return

    async def _response(self, link: _Link, seq: int, timeout_s: float) -> Ack | Retry | Error:
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    resp = await link.responses.get()
                    if resp.seq == seq:
                        return resp
                    log.warning("ignoring response for another batch seq=%d want=%d", resp.seq, seq)
        except TimeoutError:
            raise LinkDown(f"no ACK for seq={seq} within {timeout_s:g} s") from None

    def _on_ack(self, batch: SealedBatch, ack: Ack, order: Sequence[int] | None = None) -> None:
        self.stats.batches_acked += 1
        self.stats.readings_acked += ack.accepted
        self.stats.readings_duplicate += ack.duplicate
        self.stats.readings_rejected += len(ack.rejects)
        if ack.rejects:
            # Named by their position in the sealed batch, whichever form it travelled in.
            first = ack.rejects[:MAX_REJECTS_LOGGED]
            where = [_original(order, r.index) for r in first]
            shown = "; ".join(
                f"#{i} {_sensor_of(batch.readings, i)} {r.code} {r.path}: {r.message}"
                for r, i in zip(first, where, strict=True)
            )
            log.warning(
                "collector rejected readings, not resending seq=%d rejected=%d first=%s",
                batch.seq,
                len(ack.rejects),
                shown,
            )
        log.debug(
            "acked seq=%d accepted=%d duplicate=%d rejected=%d",
            ack.seq,
            ack.accepted,
            ack.duplicate,
            len(ack.rejects),
        )


def _wire_batch(batch: SealedBatch, collector_minor: int) -> tuple[Batch, list[int] | None]:
    """The batch as sent: a GBATCH of series groups when the collector takes them (and
    some series has two readings or more), else a BATCH; plus the batch position of each
    GBATCH index (None: the same), to name the readings an ACK rejects."""
    if collector_minor >= GROUPS_MINOR:
        grouped = group_readings(batch.readings)
        if grouped.groups:
            return Batch(batch.seq, grouped.rows, grouped.groups), grouped.order
    return Batch(batch.seq, batch.readings), None


def _original(order: Sequence[int] | None, index: int) -> int:
    return index if order is None or not 0 <= index < len(order) else order[index]


def _events(conn: Connection) -> list[Event]:
    """Drain every complete event from the connection; a fatal protocol error ends the link."""
    out: list[Event] = []
    while True:
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            if exc.fatal:
                raise LinkDown(
                    f"protocol error from collector: {exc.code}: {exc.message}"
                ) from None
            log.warning(
                "skipping bad frame from collector code=%s message=%s", exc.code, exc.message
            )
            continue
        if event is NEED_DATA:
            return out
        if isinstance(event, ConnectionClosed):
            if out:
                return out  # deliver what arrived before the close; the next call raises
            raise LinkDown("collector closed the connection")
        out.append(cast(Event, event))


def _sensor_of(readings: Sequence[object], index: int) -> str:
    if 0 <= index < len(readings):
        r = readings[index]
        if isinstance(r, list) and r and isinstance(r[0], str):
            return r[0]
    return "?"


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, LinkDown) else f"{type(exc).__name__}: {text}"
