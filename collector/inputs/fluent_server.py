"""The Fluent forward listener: asyncio TCP (TLS optional) around collector.inputs.fluent.

One handler per connection:

1. Authenticate. `auth = "handshake"` (default): send HELO, require a PING within the
   handshake timeout whose shared-key digest is made with the device's forward key
   (collector.inputs.auth), the device being the PING's username or, when that is empty,
   its self_hostname; a non-empty username must also prove the forward key as password.
   PONG, or PONG false and close. `auth = "record"`: no handshake (for senders that cannot
   do one, e.g. fluent-logger); every record carries the device token under `token_key`,
   which is removed before mapping. A record without a valid token belongs to no device,
   so it cannot be stored, not even as a dead letter: it is counted
   (unauthenticated_events) and its message is not acknowledged.
2. Read messages (collector.inputs.fluent.decode_message), map each event to readings
   (collector.inputs.mapping.record_readings), validate them with collector.ingest.prepare, and
   submit them to the writer as unsequenced batches (deduplicated on (series, timestamp), so a
   resent chunk stores nothing twice). Messages are handled one at a time: the next is not
   read before the previous one is committed (backpressure reaches the sender via TCP).
3. Answer {"ack": chunk} only after the commit. A storage failure closes the connection
   without an ACK: the sender resends the chunk after reconnecting.

Limits: handshake timeout, idle timeout (no bytes for `idle_timeout_s`), max connections,
the message and decompression caps of collector.inputs.fluent. A stream that does not decode as
msgpack cannot be resynchronised (no framing) and closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgpack

from collector.ingest.prepare import DeadLetter, Ingest, PreparedBatch
from collector.ingest.writer import BatchOutcome, Writer
from collector.inputs import auth as inputauth
from collector.inputs import fluent
from collector.inputs.mapping import INVALID, ForwardMapping, Reading, dead_letter, record_readings
from collector.inputs.metrics import ForwardMetrics
from collector.storage.interface import Storage, StorageError
from collector.tls import cert_device_ids
from schemas.wire import Reject

log = logging.getLogger(__name__)

READ_BYTES: Final = 256 * 1024
BATCH_READINGS: Final = 10_000
# Tokens remembered per connection in `auth = "record"` mode (a sender normally has one).
TOKEN_CACHE_ENTRIES: Final = 64
# Messages that decode but are not forward messages, tolerated per connection (as the
# wire protocol's bad-frame budget).
BAD_MESSAGE_BUDGET: Final = 16
SUBMIT_WAIT_S: Final = 30.0


@dataclass(slots=True)
class _Work:
    """One device's share of a message."""

    readings: list[Reading] = dataclasses.field(default_factory=list)
    events: list[int] = dataclasses.field(default_factory=list)
    dead: list[DeadLetter] = dataclasses.field(default_factory=list)


class _Closed(Exception):
    """The connection ends; the message says why (for the log)."""


@dataclass(slots=True, eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str
    ip: str
    unpacker: msgpack.Unpacker
    device_id: int = 0
    device: str = ""
    tokens: dict[str, tuple[int, str] | None] = dataclasses.field(default_factory=dict)
    # With mutual TLS: the device names the client certificate vouches for.
    cert_ids: frozenset[str] | None = None
    bad: int = 0
    reading: bool = False
    stopping: bool = False
    task: asyncio.Task[None] | None = None


class ForwardServer:
    """Accepts forward connections and stores what they send; see the module docstring."""

    def __init__(
        self,
        writer: Writer,
        ingest: Ingest,
        storage: Storage,
        mapping: ForwardMapping | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout_s: float = 10.0,
        idle_timeout_s: float = 60.0,
        max_connections: int = 10_000,
        max_connections_per_ip: int = 1_000,
        max_message_bytes: int = fluent.MAX_MESSAGE_BYTES,
        max_decompressed_bytes: int = fluent.MAX_DECOMPRESSED_BYTES,
        server_hostname: str | None = None,
    ) -> None:
        self.writer = writer
        self.ingest = ingest
        self.storage = storage
        self.mapping = mapping or ForwardMapping()
        self.ssl_context = ssl_context
        self.handshake_timeout_s = handshake_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self._per_ip: dict[str, int] = {}
        self.max_message_bytes = max_message_bytes
        self.max_decompressed_bytes = max_decompressed_bytes
        self.server_hostname = server_hostname or socket.gethostname()
        self.mutual_tls = ssl_context is not None and ssl_context.verify_mode == ssl.CERT_REQUIRED
        self.metrics = ForwardMetrics()
        self.address: tuple[str, int] | None = None
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._closing = asyncio.Event()

    async def run(self, host: str, port: int, bound: Callable[[tuple[str, int]], None]) -> None:
        """Listen, report the bound address through `bound`, serve until shutdown()."""
        tls: dict[str, object] = {}
        if self.ssl_context is not None:
            tls = {"ssl": self.ssl_context, "ssl_handshake_timeout": self.handshake_timeout_s}
        self._server = await asyncio.start_server(
            self._accept,
            host,
            port,
            limit=READ_BYTES,
            start_serving=False,
            **tls,  # type: ignore[arg-type]  # ssl / ssl_handshake_timeout, typed per key
        )
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            await self._server.start_serving()
            sock = self._server.sockets[0].getsockname()
            self.address = (str(sock[0]), int(sock[1]))
            bound(self.address)
            log.info("forward listening addr=%s:%d auth=%s", *self.address, self.mapping.auth)
            await self._closing.wait()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tg is None or self._closing.is_set():
            writer.close()
            return
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        ip = str(peername[0]) if isinstance(peername, tuple) else peer
        c = _Conn(reader, writer, peer, ip, fluent.unpacker(self.max_message_bytes))
        if self.mutual_tls:
            c.cert_ids = frozenset(cert_device_ids(writer.get_extra_info("peercert")))
        c.task = self._tg.create_task(self._handle(c))

    async def shutdown(self) -> None:
        """Stop accepting; connections finish the message in hand, then close."""
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.stopping = True
            if c.reading and c.task is not None:
                c.task.cancel()
        self._closing.set()

    async def _handle(self, c: _Conn) -> None:
        m = self.metrics
        if len(self._conns) >= self.max_connections:
            busy = "max_connections"
        elif self._per_ip.get(c.ip, 0) >= self.max_connections_per_ip:
            busy = "max_connections_per_ip"
        else:
            busy = ""
        if busy:
            log.warning("forward connection refused peer=%s reason=%s", c.peer, busy)
            await self._close(c)
            return
        reason = "closed"
        try:
            self._conns.add(c)
            self._per_ip[c.ip] = self._per_ip.get(c.ip, 0) + 1
            m.connections += 1
            m.open += 1
            reason = await self._session(c)
        except _Closed as exc:
            reason = str(exc)
        except (ConnectionError, TimeoutError, OSError) as exc:
            reason = f"socket error: {exc!r}"
        except asyncio.CancelledError:
            reason = "shutdown"
        except Exception:
            log.exception("forward handler failed device=%s peer=%s", c.device or "-", c.peer)
            reason = "internal error"
        finally:
            if c in self._conns:
                self._conns.discard(c)
                m.open -= 1
                left = self._per_ip.pop(c.ip, 1) - 1
                if left:
                    self._per_ip[c.ip] = left
            await self._close(c)
            log.info(
                "forward disconnected device=%s peer=%s reason=%s", c.device or "-", c.peer, reason
            )

    async def _close(self, c: _Conn) -> None:
        c.writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await c.writer.wait_closed()

    async def _send(self, c: _Conn, obj: object) -> None:
        c.writer.write(msgpack.packb(obj, use_bin_type=True))
        async with asyncio.timeout(self.idle_timeout_s):
            await c.writer.drain()

    async def _next(self, c: _Conn, timeout_s: float) -> object:
        """The next msgpack value from the peer. Raises _Closed at EOF or on garbage."""
        while True:
            try:
                return next(c.unpacker)
            except StopIteration:
                pass
            except (ValueError, msgpack.UnpackException) as exc:
                raise _Closed(f"undecodable stream: {exc}") from None
            if c.stopping:
                raise _Closed("shutdown")
            c.reading = True
            try:
                async with asyncio.timeout(timeout_s):
                    data = await c.reader.read(READ_BYTES)
            except TimeoutError:
                raise _Closed("timeout") from None
            finally:
                c.reading = False
            if not data:
                raise _Closed("closed")
            self.metrics.bytes_in += len(data)
            try:
                c.unpacker.feed(data)
            except msgpack.BufferFull:
                raise _Closed(f"message over {self.max_message_bytes} bytes") from None

    async def _session(self, c: _Conn) -> str:
        if self.mapping.auth == "handshake":
            await self._handshake(c)
        while True:
            obj = await self._next(c, self.idle_timeout_s)
            await self._message(c, obj)

    async def _handshake(self, c: _Conn) -> None:
        nonce, salt = os.urandom(16), os.urandom(16)
        await self._send(c, fluent.helo(nonce, salt))
        obj = await self._next(c, self.handshake_timeout_s)
        try:
            ping = fluent.parse_ping(obj)
        except fluent.ForwardError as exc:
            self.metrics.auth_failed += 1
            await self._send(c, fluent.pong(False, str(exc), "", ""))
            raise _Closed(f"handshake: {exc}") from None
        name = ping.username or ping.hostname
        ident = await self._in_db(lambda st: inputauth.forward_key(st, name))
        key = ident.key
        ok = inputauth.digests_equal(
            ping.shared_key_digest, fluent.digest(ping.shared_key_salt, ping.hostname, nonce, key)
        )
        if ok and ping.username:
            ok = inputauth.digests_equal(
                ping.password_digest, fluent.digest(salt, ping.username, key)
            )
        if ok and c.cert_ids is not None and name not in c.cert_ids:
            ok, ident = (
                False,
                dataclasses.replace(ident, reason="the client certificate names another device"),
            )
        if not ok or ident.device is None:
            self.metrics.auth_failed += 1
            reason = ident.reason or "shared_key or password mismatch"
            await self._send(c, fluent.pong(False, reason, "", ""))
            raise _Closed(f"auth failed device={name} reason={reason}")
        c.device_id, c.device = ident.device.id, ident.device.name
        answer = fluent.digest(ping.shared_key_salt, self.server_hostname, nonce, key)
        await self._send(c, fluent.pong(True, "", self.server_hostname, answer))
        log.info("forward connected device=%s peer=%s", c.device, c.peer)

    async def _in_db(
        self, fn: Callable[[Storage], inputauth.ForwardIdentity]
    ) -> inputauth.ForwardIdentity:
        try:
            return await asyncio.to_thread(fn, self.storage)
        except (sqlite3.Error, StorageError) as exc:
            raise _Closed(f"device registry unavailable: {exc}") from None

    async def _message(self, c: _Conn, obj: object) -> None:
        m = self.metrics
        m.messages += 1
        try:
            msg = fluent.decode_message(obj, self.max_decompressed_bytes)
        except fluent.ForwardError as exc:
            m.bad_messages += 1
            c.bad += 1
            log.debug("forward bad message peer=%s error=%s", c.peer, exc)
            if c.bad > BAD_MESSAGE_BUDGET:
                raise _Closed("too many bad messages") from None
            return
        m.events += len(msg.events) + len(msg.invalid)
        # Per device id: its readings, the index of each one's event in the message, and
        # dead letters for what could not be readings (idx = the event's index).
        work: dict[int, _Work] = {}
        now = time.time_ns()
        unauthenticated = 0
        for i, ev in enumerate(msg.events):
            record = ev.record
            device_id = c.device_id
            if self.mapping.auth == "record":
                found = await self._record_device(c, record)
                if found is None:
                    unauthenticated += 1
                    continue
                device_id = found
                record = {k: v for k, v in record.items() if k != self.mapping.token_key}
            readings, bad = record_readings(self.mapping, msg.tag, record, ev.ts_ns or now)
            w = work.setdefault(device_id, _Work())
            w.readings.extend(readings)
            w.events.extend([i] * len(readings))
            w.dead.extend(
                dead_letter(i, b.value, b.code, b.key, f"{msg.tag}: {b.message}") for b in bad
            )
        if msg.invalid and c.device_id:
            work.setdefault(c.device_id, _Work()).dead.extend(
                dead_letter(i, e, INVALID, "", f"{msg.tag}: {why}") for i, e, why in msg.invalid
            )
        m.unauthenticated += unauthenticated
        ok = await self._store(work, msg.tag, now)
        if not ok:
            m.storage_failures += 1
            raise _Closed("storage unavailable (not acknowledged; the sender resends)")
        if unauthenticated:
            # Nothing of these events could be kept: leave the chunk unacknowledged.
            log.warning(
                "forward events without a valid token peer=%s count=%d", c.peer, unauthenticated
            )
            return
        if msg.chunk is not None:
            await self._send(c, fluent.ack(msg.chunk))
            m.acks += 1

    async def _record_device(self, c: _Conn, record: object) -> int | None:
        assert isinstance(record, dict)
        token = record.get(self.mapping.token_key)
        if not isinstance(token, str) or not token:
            return None
        if token not in c.tokens:
            if len(c.tokens) >= TOKEN_CACHE_ENTRIES:
                c.tokens.clear()

            def check() -> tuple[int, str] | None:
                auth = inputauth.by_token(self.storage, token)
                return (auth.device.id, auth.device.name) if auth.device else None

            try:
                found = await asyncio.to_thread(check)
            except (sqlite3.Error, StorageError) as exc:
                raise _Closed(f"device registry unavailable: {exc}") from None
            if found is not None and c.cert_ids is not None and found[1] not in c.cert_ids:
                found = None  # mutual TLS: the certificate names another device
            c.tokens[token] = found
            if c.tokens[token] is None:
                self.metrics.auth_failed += 1
        known = c.tokens[token]
        if known is None:
            return None
        c.device = known[1]
        return known[0]

    async def _store(self, work: dict[int, _Work], tag: str, now: int) -> bool:
        """Validate and commit everything of one message; False if storage failed."""
        futures: list[asyncio.Future[BatchOutcome]] = []
        for device_id, w in work.items():
            readings, dead = w.readings, w.dead
            for start in range(0, max(len(readings), 1), BATCH_READINGS):
                part: list[object] = list(readings[start : start + BATCH_READINGS])
                b = self.ingest.prepare(0, part, now)
                b.dead_letters = tuple(  # idx: the event's index in the message
                    dataclasses.replace(
                        d, index=w.events[start + d.index], message=f"{tag}: {d.message}"
                    )
                    for d in b.dead_letters
                )
                if start == 0 and dead:
                    b.dead_letters = (*dead, *b.dead_letters)
                    b.rejects = (
                        *(Reject(d.index, d.code, d.path, d.message) for d in dead),
                        *b.rejects,
                    )
                if not b.ts and not b.dead_letters:
                    continue
                futures.append(await self._submit(device_id, b))
        results = await asyncio.gather(*futures, return_exceptions=True)
        m = self.metrics
        ok = True
        for r in results:
            if not isinstance(r, BatchOutcome) or r.retry_after_ms is not None:
                ok = False
                continue
            m.accepted += r.accepted
            m.duplicate += r.duplicate
            m.rejected += len(r.rejects)
        return ok

    async def _submit(self, device_id: int, b: PreparedBatch) -> asyncio.Future[BatchOutcome]:
        try:
            async with asyncio.timeout(SUBMIT_WAIT_S):
                return await self.writer.submit(device_id, b)
        except TimeoutError:
            raise _Closed("the writer queue stayed full") from None
        except RuntimeError:
            raise _Closed("the collector is stopping") from None
