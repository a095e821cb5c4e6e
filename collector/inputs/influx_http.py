"""InfluxDB line-protocol writes over HTTP: `POST /api/v2/write` and the v1 `POST /write`.

What an InfluxDB client (Telegraf `outputs.influxdb_v2`/`outputs.influxdb`, the
influxdb-client libraries, Vector's `influxdb_metrics` sink) sends is stored like an
agent's BATCH: authenticated per device, validated by `collector.ingest.prepare` against the same
schemas, committed by the one writer, answered only after that commit.

- Auth: `Authorization: Token <device token>` (v2 and v1); v1 also `?u=<device>&p=<token>`
  or HTTP Basic (user = device, password = token). The device is the token's owner
  (`collector.inputs.auth`); missing or wrong credentials answer 401.
- Body: line protocol (`collector.inputs.lineprotocol`), optionally `Content-Encoding: gzip`
  (aiohttp decompresses it in bounded chunks; at most `max_body_bytes` decompressed bytes
  are read, more answers 413; a Content-Length over it answers 413 before reading).
- `precision`: v2 `ns|us|ms|s`, v1 also `n|u|m|h`; a point without a timestamp gets the
  receive time. `org`, `bucket`, `db`, `rp` are accepted and ignored: the device is the
  only namespace.
- Mapping: `collector.inputs.mapping.point_readings` (sensor = measurement/field, tags = tags).
- Partial writes: the good points of a body are stored; every bad line (does not parse) and
  every rejected field (fails validation) goes to the dead-letter table (idx = its line
  number, message starting "line N:"); the answer is then 400
  `{"code": "invalid", "message": "partial write: line N: <reason> ..."}` naming the first
  bad line (the v1 route answers errors as `{"error": "..."}`, as InfluxDB 1.x does).
  Clients do not resend a 400, and a resend would store nothing twice anyway: readings
  are deduplicated on (series, timestamp) and the batches carry no sequence
  number (seq 0: never a resend, and max(last_seq, 0) leaves the stream's last_seq alone).
- 204 only after every batch of the body committed. The writer's queue full for
  `SUBMIT_WAIT_S` answers 429, a storage error (writer RETRY) or a stopped writer 503,
  both with Retry-After; whatever part was committed is deduplicated when the client resends.

No SQL here (the registry is read through collector.inputs.auth); counters in `InfluxMetrics`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from collector.ingest.prepare import DeadLetter, Ingest, PreparedBatch
from collector.ingest.writer import BatchOutcome, Writer
from collector.inputs import auth as inputauth
from collector.inputs import lineprotocol
from collector.inputs.mapping import INVALID, InfluxMapping, dead_letter, point_readings
from collector.inputs.metrics import InfluxMetrics
from collector.storage.interface import Storage, StorageError
from schemas.wire import Reject

log = logging.getLogger(__name__)

V2_PATH: Final = "/api/v2/write"
V1_PATH: Final = "/write"
# Decompressed body limit. Telegraf's default batch (1000 metrics) is ~100-300 KB; 32 MiB
# leaves room for large batches while bounding what one request holds in memory (the
# decoded readings cost ~10x the text).
MAX_BODY_BYTES: Final = 32 * 1024 * 1024
# Write requests reading or storing a body at once: with the body cap, this bounds the
# memory all writes can hold (8 x 32 MiB); more wait (up to SUBMIT_WAIT_S, then 429).
MAX_CONCURRENT_WRITES: Final = 8
# Readings per submitted batch: the wire protocol's max_batch_readings, so one HTTP body
# costs the writer what the same readings cost over TCP.
BATCH_READINGS: Final = 10_000
# How long a request waits for room in the writer's queue before it answers 429.
SUBMIT_WAIT_S: Final = 10.0
# A body must arrive within this (a client trickling bytes holds a request slot and its
# buffer): Telegraf's own request timeout is 5 s by default.
BODY_TIMEOUT_S: Final = 60.0
# Retry-After on 429/503: the writer's own RETRY hint is 1 s.
RETRY_AFTER_S: Final = 1
_READ_CHUNK_BYTES: Final = 64 * 1024
_PRECISION_NS: Final = {
    "ns": 1,
    "n": 1,
    "us": 1_000,
    "u": 1_000,
    "µ": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_V2_PRECISIONS: Final = ("ns", "us", "ms", "s")


class _Refused(Exception):
    """The request is answered without storing anything."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class InfluxInput:
    """The two write routes; `register` adds them to the collector's aiohttp app."""

    writer: Writer
    ingest: Ingest
    storage: Storage
    mapping: InfluxMapping = dataclasses.field(default_factory=InfluxMapping)
    max_body_bytes: int = MAX_BODY_BYTES
    submit_wait_s: float = SUBMIT_WAIT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    max_concurrent_writes: int = MAX_CONCURRENT_WRITES
    metrics: InfluxMetrics = dataclasses.field(default_factory=InfluxMetrics)
    _slots: asyncio.Semaphore | None = dataclasses.field(default=None, init=False, repr=False)

    def register(self, app: web.Application) -> None:
        app.router.add_post(V2_PATH, self._v2)
        app.router.add_post(V1_PATH, self._v1)

    async def _v2(self, request: web.Request) -> web.Response:
        return await self._handle(request, v1=False)

    async def _v1(self, request: web.Request) -> web.Response:
        return await self._handle(request, v1=True)

    async def _handle(self, request: web.Request, *, v1: bool) -> web.Response:
        self.metrics.requests += 1
        try:
            resp = await self._write(request, v1=v1)
        except _Refused as exc:
            headers = {}
            if exc.status in (429, 503):
                headers["Retry-After"] = str(RETRY_AFTER_S)
            if exc.status == 401:
                headers["WWW-Authenticate"] = 'Token realm="telemetry"'
            # InfluxDB 2.x answers {"code", "message"}; 1.x clients read {"error"}.
            answer = {"error": exc.message} if v1 else {"code": exc.code, "message": exc.message}
            resp = web.json_response(answer, status=exc.status, headers=headers)
        self.metrics.answered(resp.status)
        return resp

    async def _write(self, request: web.Request, *, v1: bool) -> web.Response:
        precision = _precision(request, v1)
        device_id, device = await self._authenticate(request, v1)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent_writes)
        try:
            async with asyncio.timeout(self.submit_wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise _Refused(429, "too many requests", "too many writes at once") from None
        try:
            body = await self._body(request)
            tally = _Tally()
            batches = self._batches(body, precision, time.time_ns(), tally)
            outcomes = await self._commit(device_id, batches)
        finally:
            self._slots.release()
        accepted = sum(o.accepted for o in outcomes)
        duplicate = sum(o.duplicate for o in outcomes)
        m = self.metrics
        m.lines += tally.lines
        m.accepted += accepted
        m.duplicate += duplicate
        m.rejected += tally.rejected
        log.debug(
            "influx write device=%s accepted=%d duplicate=%d rejected=%d",
            device,
            accepted,
            duplicate,
            tally.rejected,
        )
        if tally.first_bad is None:
            return web.Response(status=204)
        raise _Refused(
            400,
            "invalid",
            f"partial write: {tally.first_bad[1]} ({tally.rejected} of {tally.total} "
            "rejected and kept as dead letters; the others were stored)",
        )

    async def _authenticate(self, request: web.Request, v1: bool) -> tuple[int, str]:
        name, token = _credentials(request, v1)
        if token is None:
            raise _Refused(401, "unauthorized", "missing token: use 'Authorization: Token ...'")

        def check() -> tuple[int, str] | str:
            auth = inputauth.by_token(self.storage, token, name)
            return (auth.device.id, auth.device.name) if auth.device else auth.reason

        try:
            result = await asyncio.to_thread(check)
        except (sqlite3.Error, StorageError) as exc:
            raise _Refused(503, "unavailable", f"device registry unavailable: {exc}") from None
        if isinstance(result, str):
            raise _Refused(401, "unauthorized", result)
        return result

    async def _body(self, request: web.Request) -> str:
        limit = self.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _Refused(413, "request too large", f"body over {limit} bytes")
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while chunk := await request.content.read(_READ_CHUNK_BYTES):
                    size += len(chunk)
                    if size > limit:
                        raise _Refused(
                            413, "request too large", f"body over {limit} bytes (decompressed)"
                        )
                    parts.append(chunk)
        except TimeoutError:
            raise _Refused(408, "request timeout", "the body did not arrive in time") from None
        except (RequestPayloadError, HttpProcessingError, ValueError) as exc:
            # A broken gzip stream or chunked encoding: the request cannot be read.
            raise _Refused(400, "invalid", f"cannot read the body: {exc}") from None
        self.metrics.bytes_in += size
        return b"".join(parts).decode("utf-8", "surrogateescape")

    def _batches(
        self, body: str, precision_ns: int, received_ns: int, tally: _Tally
    ) -> Iterator[PreparedBatch]:
        """The body as validated batches of at most BATCH_READINGS readings, made one at a
        time (so a large body is never held decoded all at once), counted in `tally`."""
        readings: list[object] = []
        lines: list[int] = []
        errors: list[DeadLetter] = []

        def batch() -> PreparedBatch:
            b = self.ingest.prepare(0, readings, received_ns)
            dead = []
            for d in b.dead_letters:
                line = lines[d.index]
                dead.append(dataclasses.replace(d, index=line, message=f"line {line}: {d.message}"))
                tally.bad(line, f"line {line}: {d.path or 'reading'}: {d.message}")
            b.dead_letters = (*errors, *dead)
            b.rejects = (*(Reject(e.index, e.code, e.path, e.message) for e in errors), *b.rejects)
            tally.rejected += len(b.dead_letters)
            readings.clear()
            lines.clear()
            errors.clear()
            return b

        for item in lineprotocol.parse(body):
            tally.lines += 1
            if isinstance(item, lineprotocol.LineError):
                tally.total += 1
                msg = f"line {item.line}: {item.message}"
                errors.append(dead_letter(item.line, item.text, INVALID, "", msg))
                tally.bad(item.line, msg)
            else:
                p = item.point
                ts = received_ns if p.timestamp is None else p.timestamp * precision_ns
                rs = point_readings(self.mapping, p, ts)
                tally.total += len(rs)
                readings.extend(rs)
                lines.extend([item.line] * len(rs))
            if len(readings) >= BATCH_READINGS or len(errors) >= BATCH_READINGS:
                yield batch()
        if readings or errors:
            yield batch()

    async def _commit(self, device_id: int, batches: Iterator[PreparedBatch]) -> list[BatchOutcome]:
        """Submit each batch as it is made; wait for every submitted one to settle."""
        futures: list[asyncio.Future[BatchOutcome]] = []
        try:
            for b in batches:
                await asyncio.sleep(0)  # parsing and validating run on the loop: let others in
                try:
                    async with asyncio.timeout(self.submit_wait_s):
                        futures.append(await self.writer.submit(device_id, b))
                except TimeoutError:
                    raise _Refused(429, "too many requests", "the writer queue is full") from None
                except RuntimeError:
                    raise _Refused(503, "unavailable", "the collector is stopping") from None
        finally:
            # Answer only after everything submitted is settled, whatever happens next.
            done = await asyncio.gather(*futures, return_exceptions=True) if futures else []
        outcomes: list[BatchOutcome] = []
        for o in done:
            if not isinstance(o, BatchOutcome):
                raise _Refused(503, "unavailable", "storage failed; retry")
            if o.retry_after_ms is not None:
                raise _Refused(503, "unavailable", "storage unavailable; retry")
            outcomes.append(o)
        return outcomes


@dataclass(slots=True)
class _Tally:
    """What one request's body held: lines, readings + bad lines, rejects, the first bad."""

    lines: int = 0
    total: int = 0
    rejected: int = 0
    first_bad: tuple[int, str] | None = None

    def bad(self, line: int, message: str) -> None:
        if self.first_bad is None or line < self.first_bad[0]:
            self.first_bad = (line, message)


def _precision(request: web.Request, v1: bool) -> int:
    p = request.query.get("precision", "ns")
    if p not in _PRECISION_NS or (not v1 and p not in _V2_PRECISIONS):
        allowed = "n, ns, u, us, ms, s, m, h" if v1 else ", ".join(_V2_PRECISIONS)
        raise _Refused(400, "invalid", f"invalid precision {p!r} (one of {allowed})")
    return _PRECISION_NS[p]


def _credentials(request: web.Request, v1: bool) -> tuple[str | None, str | None]:
    """(device name or None, token or None) from the request."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.strip().partition(" ")
    if scheme.lower() == "token" and value.strip():
        return None, value.strip()
    if v1 and scheme.lower() == "basic":
        try:
            user, _, password = (
                base64.b64decode(value.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        return (user or None), password or None
    if v1 and "p" in request.query:
        return request.query.get("u") or None, request.query["p"] or None
    return None, None
