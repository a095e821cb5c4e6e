// TelemetryClient: streams readings to a collector over TCP (TLS optional) and reports what
// became of each one. It owns the socket, the timers and a bounded in-memory queue; the
// protocol itself (frames, messages, states) is wire.js.
//
// Delivery (docs/protocol.md §9, with the additive protocol v1.1 rules):
//   - HELLO carries a `stream` id, 32 random hex digits made per client instance: the queue
//     lives in memory, so a new instance is a new stream whose seq starts at 1. A v1.0
//     collector ignores the field.
//   - One BATCH in flight. Readings queued while it flies form the next batch (up to the
//     smaller of `maxBatchReadings` and WELCOME's limits), so batching needs no timer.
//   - ACK settles the batch: each send() promise gets its readings' rejects.
//   - RETRY: the same batch (same seq) is sent again after retry_after_ms.
//   - A non-fatal ERROR naming the in-flight seq (v1.1; for a v1.0 collector, which names no
//     seq, a non-fatal bad_message/malformed_frame while a batch flies) means the batch can
//     never be accepted: it is dropped, its readings counted as dropped and reported in the
//     next HELLO.
//   - Connection lost, BYE, or another fatal ERROR: reconnect with jittered exponential
//     backoff and send the unacknowledged batch again (same seq) before anything new. It is
//     resent even when WELCOME.last_seq says it was committed: the collector then answers
//     with duplicates and the same rejects, so every send() still learns its rejects.
//   - auth_failed and unsupported_version are fatal for the client: it stops, every pending
//     promise is rejected with a TelemetryError and an 'error' event is emitted.
//   - Heartbeats: PING after one quiet period; the link is dead after 2 periods + 1 s
//     without a byte (as the reference agent).

import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import net from "node:net";
import tls from "node:tls";

import { encodeReading } from "./readings.js";
import {
  CLOSED,
  Connection,
  ErrorCode,
  FRAME_HEADER_BYTES,
  MAX_BATCH_READINGS,
  MAX_FRAME_BYTES,
  NEED_DATA,
  ProtocolError,
  PROTOCOL_VERSION,
  encodeBatchFrame,
} from "./wire.js";

export const CLIENT_NAME = "telemetry-js";
export const CLIENT_VERSION = "0.1.0";

// Heartbeat deadlines use a monotonic clock: a wall-clock step must not kill a live link.
const monotonicMs = () => performance.now();
// v1.1 stream ids: "" (the device's default stream) or 1..64 of these characters.
const STREAM_RE = /^[A-Za-z0-9_.:-]{0,64}$/;

// ERROR codes after which reconnecting cannot help.
const FATAL_FOR_CLIENT = new Set([ErrorCode.AUTH_FAILED, ErrorCode.UNSUPPORTED_VERSION]);
// Non-fatal ERROR codes that answer a malformed BATCH (v1.1 §4).
const BATCH_REFUSED = new Set([ErrorCode.BAD_MESSAGE, ErrorCode.MALFORMED_FRAME]);
// BATCH body overhead besides the readings: array header, type, seq (uint64), array32 header.
const BATCH_OVERHEAD_BYTES = 1 + 1 + 9 + 5;

/** An error that ends the client (auth_failed, ...) or a send that cannot complete. */
export class TelemetryError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "TelemetryError";
    this.code = code;
    this.detail = message;
  }
}

/** "host:port" or "[v6]:port" -> {host, port}. */
export function parseAddress(address) {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(String(address));
  if (!m) throw new TypeError(`address must be host:port, got ${JSON.stringify(address)}`);
  const port = Number(m[3]);
  if (port < 1 || port > 65535) throw new RangeError(`port out of range in ${address}`);
  return { host: m[1] ?? m[2], port };
}

/** A new stream id: 32 lowercase hex digits of a random 128-bit value (v1.1). */
export function newStreamId() {
  return randomBytes(16).toString("hex");
}

class Deque {
  constructor() {
    this.items = [];
    this.head = 0;
  }
  get length() {
    return this.items.length - this.head;
  }
  push(x) {
    this.items.push(x);
  }
  peek(i = 0) {
    return this.items[this.head + i];
  }
  unshiftAll(xs) {
    this.items = xs.concat(this.items.slice(this.head));
    this.head = 0;
  }
  shift() {
    const x = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return x;
  }
}

/**
 * A client for one device. Options:
 *   address "host:port" (or host + port), deviceId, token   where and who
 *   tls: false | true | tls.connect options ({ca, servername, rejectUnauthorized, ...})
 *   stream (default: a new random id), agent, agentVersion
 *   maxQueueReadings (100000): readings held until ACKed; when full the oldest queued ones
 *     are dropped and counted
 *   maxBatchReadings (1000), heartbeatMs (WELCOME's, or shorter), connectTimeoutMs (10000)
 *   backoffInitialMs (100), backoffMaxMs (10000), floatKinds (extra kinds sent as float64)
 * Events: 'welcome' (WELCOME), 'ack' (ACK), 'retry' (RETRY), 'dropped' ({seq, count, code,
 * message}), 'disconnect' (Error), 'warning' (Error), 'error' (TelemetryError; fatal).
 */
export class TelemetryClient extends EventEmitter {
  constructor(options = {}) {
    super();
    const { host, port } = options.address ? parseAddress(options.address) : options;
    if (!host || !port) throw new TypeError("TelemetryClient needs address (host:port) or host and port");
    if (typeof options.deviceId !== "string" || typeof options.token !== "string") {
      throw new TypeError("TelemetryClient needs deviceId and token strings");
    }
    this.host = host;
    this.port = Number(port);
    this.deviceId = options.deviceId;
    this.token = options.token;
    this.tls = options.tls ?? false;
    this.stream = options.stream ?? newStreamId();
    if (typeof this.stream !== "string" || !STREAM_RE.test(this.stream)) {
      throw new TypeError("stream must be up to 64 characters of [A-Za-z0-9_.:-]");
    }
    this.agent = options.agent ?? CLIENT_NAME;
    this.agentVersion = options.agentVersion ?? CLIENT_VERSION;
    this.maxQueueReadings = options.maxQueueReadings ?? 100000;
    this.maxBatchReadings = options.maxBatchReadings ?? 1000;
    this.heartbeatMs = options.heartbeatMs ?? null;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10000;
    this.backoffInitialMs = options.backoffInitialMs ?? 100;
    this.backoffMaxMs = options.backoffMaxMs ?? 10000;
    this.floatKinds = new Set(options.floatKinds ?? []);

    /** Running totals since this client was made. */
    this.stats = {
      sent: 0, // readings handed to send()
      accepted: 0,
      duplicate: 0,
      rejected: 0,
      dropped: 0,
      batches: 0, // BATCH frames written, resends included
      retries: 0,
      reconnects: 0,
    };
    this.welcome = null; // the current connection's WELCOME, null when not ready
    this._queue = new Deque(); // entries {bytes, call, index} not yet in a batch
    this._batch = null; // {seq, entries, frame}: formed, not yet ACKed
    this._inFlight = false; // _batch written on the current connection, no answer yet
    this._nextSeq = 1;
    this._droppedUnreported = 0;
    this._droppedInHello = 0;
    this._nonce = 0;
    this._attempt = 0;
    this._started = false;
    this._closing = false;
    this._fatal = null;
    this._session = null; // {socket, conn, timers...}
    this._backoffTimer = null;
    this._retryTimer = null;
    this._waiters = []; // flush() waiters: {resolve, reject}
    this._readyWaiters = []; // connect() waiters
    this._loopDone = null;
  }

  /** Start connecting (if not yet); resolves with the WELCOME once the client is ready. */
  connect() {
    if (this._fatal) return Promise.reject(this._fatal);
    if (this._closing) return Promise.reject(new TelemetryError("closed", "client is closed"));
    this._start();
    if (this.welcome) return Promise.resolve(this.welcome);
    return new Promise((resolve, reject) => this._readyWaiters.push({ resolve, reject }));
  }

  /**
   * Queue one reading or an array of readings ({sensor, kind, value, ts?, unit?, tags?};
   * see readings.js for how numbers are encoded). Resolves once every one is acknowledged
   * or dropped, with {count, acked, rejects: [{index, code, path, message}], dropped}
   * (index: position in the array given). Rejects with TelemetryError when the client
   * stops for good. Throws TypeError at once for a reading that cannot be encoded.
   */
  send(readings) {
    const list = Array.isArray(readings) ? readings : [readings];
    const encoded = list.map((r) => encodeReading(r, { floatKinds: this.floatKinds }));
    if (this._fatal) return Promise.reject(this._fatal);
    if (this._closing) return Promise.reject(new TelemetryError("closed", "client is closed"));
    const call = { count: list.length, remaining: list.length, rejects: [], dropped: 0 };
    const promise = new Promise((resolve, reject) => {
      call.resolve = resolve;
      call.reject = reject;
    });
    this.stats.sent += list.length;
    if (list.length === 0) {
      this._settleCall(call);
      return promise;
    }
    encoded.forEach((bytes, index) => this._queue.push({ bytes, call, index }));
    this._enforceBound();
    this._start();
    this._pump();
    return promise;
  }

  /** Resolves when every reading sent so far is acknowledged (or dropped). */
  flush() {
    if (this._fatal) return Promise.reject(this._fatal);
    if (this._idle()) return Promise.resolve();
    return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
  }

  /** Readings queued or in the unacknowledged batch. */
  get pending() {
    return this._queue.length + (this._batch ? this._batch.entries.length : 0);
  }

  /**
   * Stop: by default wait for everything to be acknowledged first, then say BYE and close.
   * With {flush: false}, pending send() promises are rejected.
   */
  async close({ flush = true } = {}) {
    if (flush && !this._fatal && !this._closing) await this.flush();
    this._closing = true;
    this._stop(new TelemetryError("closed", "client closed before the readings were acknowledged"));
    await this._loopDone;
  }

  // ------------------------------------------------------------------ connection loop

  _start() {
    if (this._started || this._closing || this._fatal) return;
    this._started = true;
    this._loopDone = this._loop();
  }

  async _loop() {
    while (!this._closing && !this._fatal) {
      const reason = await this._session_();
      this.welcome = null;
      this._inFlight = false;
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      if (this._closing || this._fatal) break;
      this.stats.reconnects += 1;
      this.emit("disconnect", reason);
      const delay = Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** this._attempt) * (0.5 + Math.random() / 2);
      this._attempt = Math.min(this._attempt + 1, 30);
      await new Promise((resolve) => {
        this._backoffTimer = setTimeout(resolve, delay);
        this._backoffWake = resolve;
      });
      this._backoffTimer = null;
    }
  }

  // One connection, from connect to close; resolves with the reason it ended.
  _session_() {
    return new Promise((resolve) => {
      const conn = new Connection("agent");
      const opts = { host: this.host, port: this.port };
      let socket;
      if (this.tls) {
        const extra = this.tls === true ? {} : this.tls;
        const servername = net.isIP(this.host) ? undefined : this.host;
        socket = tls.connect({ ...opts, servername, ...extra });
      } else {
        socket = net.connect(opts);
      }
      socket.setNoDelay(true);
      const s = { socket, conn, reason: null, lastReceived: monotonicMs(), lastSent: monotonicMs(), heartbeat: null };
      this._session = s;
      const handshake = setTimeout(() => this._drop(s, new Error("no WELCOME within the connect timeout")), this.connectTimeoutMs);
      socket.once(this.tls ? "secureConnect" : "connect", () => {
        this._droppedInHello = this._droppedUnreported;
        this._write(s, {
          type: "HELLO",
          version: PROTOCOL_VERSION,
          deviceId: this.deviceId,
          token: this.token,
          agent: this.agent,
          agentVersion: this.agentVersion,
          dropped: this._droppedInHello,
          stream: this.stream,
        });
      });
      socket.on("data", (chunk) => {
        s.lastReceived = monotonicMs();
        conn.receiveData(chunk);
        this._drain(s);
      });
      socket.on("end", () => {
        conn.receiveData(null);
        this._drain(s);
        socket.end();
      });
      socket.on("error", (err) => {
        s.reason ??= err;
      });
      socket.on("close", () => {
        clearTimeout(handshake);
        clearInterval(s.heartbeat);
        if (this._session === s) this._session = null;
        resolve(s.reason ?? new Error("connection closed by the collector"));
      });
      s.onWelcome = () => clearTimeout(handshake);
    });
  }

  _write(s, msg) {
    if (s.socket.destroyed) return;
    s.socket.write(s.conn.send(msg));
    s.lastSent = monotonicMs();
  }

  _drop(s, reason) {
    s.reason ??= reason;
    s.socket.destroy();
  }

  _drain(s) {
    for (;;) {
      let msg;
      try {
        msg = s.conn.nextEvent();
      } catch (err) {
        if (!(err instanceof ProtocolError)) throw err;
        if (err.fatal) {
          // The collector broke the protocol: tell it why, then reconnect.
          if (err.code !== ErrorCode.TRUNCATED_FRAME) {
            s.socket.write(s.conn.send({ type: "ERROR", code: err.code, message: err.detail, fatal: true }));
          }
          this._drop(s, err);
          return;
        }
        this.emit("warning", err);
        continue;
      }
      if (msg === NEED_DATA || msg === CLOSED) return;
      this._handle(s, msg);
      if (s.socket.destroyed) return;
    }
  }

  _handle(s, msg) {
    switch (msg.type) {
      case "WELCOME":
        return this._onWelcome(s, msg);
      case "ACK":
        return this._onAck(msg);
      case "RETRY":
        return this._onRetry(s, msg);
      case "PING":
        return this._write(s, { type: "PONG", nonce: msg.nonce });
      case "PONG":
        return undefined; // any frame proves the link alive
      case "ERROR":
        return this._onError(s, msg);
      case "BYE":
        this._drop(s, new TelemetryError("bye", msg.reason || "the collector said BYE"));
        return undefined;
    }
    return undefined;
  }

  _onWelcome(s, msg) {
    s.onWelcome();
    this.welcome = msg;
    this._attempt = 0;
    // The collector has counted what HELLO reported.
    this._droppedUnreported -= this._droppedInHello;
    this._droppedInHello = 0;
    const last = typeof msg.lastSeq === "bigint" ? Number.MAX_SAFE_INTEGER : msg.lastSeq;
    this._nextSeq = Math.max(this._nextSeq, last + 1);
    const b = this._batch;
    if (b && (b.entries.length > this._batchLimit() || b.frame.length - FRAME_HEADER_BYTES > this._frameLimit())) {
      // This collector takes smaller batches than the one waiting: split it into new ones
      // (the seq is left unused: gaps are allowed). Readings already committed under the old
      // seq come back as duplicates, never stored twice.
      this._batch = null;
      this._queue.unshiftAll(b.entries);
    }
    const hb = Math.min(this.heartbeatMs ?? msg.heartbeatMs, msg.heartbeatMs) || 15000;
    s.heartbeat = setInterval(() => this._beat(s, hb), Math.max(20, Math.floor(hb / 4)));
    this.emit("welcome", msg);
    for (const w of this._readyWaiters.splice(0)) w.resolve(msg);
    this._pump();
  }

  _beat(s, hb) {
    const now = monotonicMs();
    if (now - s.lastReceived > 2 * hb + 1000) {
      this._drop(s, new Error(`no byte from the collector for ${Math.round(now - s.lastReceived)} ms`));
    } else if (now - s.lastSent >= hb) {
      this._nonce = (this._nonce + 1) % 2 ** 31;
      this._write(s, { type: "PING", nonce: this._nonce });
    }
  }

  _onAck(msg) {
    const b = this._batch;
    if (!b || !this._inFlight || msg.seq !== b.seq) {
      this.emit("warning", new TelemetryError("unexpected_ack", `ACK for seq ${msg.seq} that is not in flight`));
      return;
    }
    this._batch = null;
    this._inFlight = false;
    this.stats.accepted += msg.accepted;
    this.stats.duplicate += msg.duplicate;
    this.stats.rejected += msg.rejects.length;
    for (const r of msg.rejects) {
      const e = b.entries[r.index];
      if (e) e.call.rejects.push({ index: e.index, code: r.code, path: r.path, message: r.message });
    }
    for (const e of b.entries) this._done(e.call);
    this.emit("ack", msg);
    this._pump();
  }

  _onRetry(s, msg) {
    const b = this._batch;
    if (!b || !this._inFlight || msg.seq !== b.seq) {
      this.emit("warning", new TelemetryError("unexpected_retry", `RETRY for seq ${msg.seq} that is not in flight`));
      return;
    }
    this.stats.retries += 1;
    this._inFlight = false;
    this.emit("retry", msg);
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._pump();
    }, msg.retryAfterMs);
  }

  _onError(s, msg) {
    const err = new TelemetryError(msg.code, msg.message || msg.code);
    err.seq = msg.seq;
    if (msg.fatal) {
      if (FATAL_FOR_CLIENT.has(msg.code)) {
        this._fail(err);
      } else {
        this._drop(s, err); // reconnect; the batch in flight, if any, is sent again
      }
      return;
    }
    const b = this._batch;
    const answersBatch =
      b && this._inFlight && (msg.seq ? msg.seq === b.seq : this.welcome?.minor === 0 && BATCH_REFUSED.has(msg.code));
    if (!answersBatch) {
      this.emit("warning", err);
      return;
    }
    // The batch can never be accepted: drop it rather than resend it unchanged (v1.1 §4).
    this._batch = null;
    this._inFlight = false;
    this._countDropped(b.entries);
    this.emit("dropped", { seq: b.seq, count: b.entries.length, code: msg.code, message: msg.message });
    this._pump();
  }

  // ------------------------------------------------------------------ queue and batches

  _pump() {
    const s = this._session;
    if (!s || !this.welcome || this._inFlight || this._retryTimer || s.socket.destroyed) return;
    if (!this._batch) {
      if (this._queue.length === 0) {
        this._checkIdle();
        return;
      }
      this._batch = this._formBatch();
      if (!this._batch) return this._pump();
    }
    s.socket.write(this._batch.frame);
    s.lastSent = monotonicMs();
    this._inFlight = true;
    this.stats.batches += 1;
  }

  _batchLimit() {
    return Math.min(this.maxBatchReadings, this.welcome.maxBatchReadings || MAX_BATCH_READINGS);
  }

  _frameLimit() {
    return this.welcome.maxFrameBytes || MAX_FRAME_BYTES;
  }

  _formBatch() {
    const limit = this._batchLimit();
    const maxBody = this._frameLimit() - BATCH_OVERHEAD_BYTES;
    const entries = [];
    let size = 0;
    while (this._queue.length && entries.length < limit) {
      const e = this._queue.peek();
      if (size + e.bytes.length > maxBody) {
        if (entries.length) break;
        // One reading larger than a frame can never be sent.
        this._queue.shift();
        this._countDropped([e]);
        this.emit("dropped", { seq: 0, count: 1, code: "too_large", message: `reading of ${e.bytes.length} bytes` });
        continue;
      }
      entries.push(this._queue.shift());
      size += e.bytes.length;
    }
    if (!entries.length) return null;
    const seq = this._nextSeq++;
    const frame = encodeBatchFrame(seq, entries.map((e) => e.bytes));
    if (frame.length - FRAME_HEADER_BYTES > this._frameLimit()) {
      throw new Error("internal: batch frame over the limit");
    }
    return { seq, entries, frame };
  }

  // When the queue is over its bound, drop the oldest readings not yet in a batch.
  _enforceBound() {
    const over = this.pending - this.maxQueueReadings;
    if (over <= 0) return;
    const dropped = [];
    for (let i = 0; i < over && this._queue.length; i++) dropped.push(this._queue.shift());
    this._countDropped(dropped);
    this.emit("dropped", { seq: 0, count: dropped.length, code: "queue_full", message: "queue full: oldest dropped" });
  }

  _countDropped(entries) {
    this.stats.dropped += entries.length;
    this._droppedUnreported += entries.length;
    for (const e of entries) {
      e.call.dropped += 1;
      this._done(e.call);
    }
  }

  _done(call) {
    call.remaining -= 1;
    if (call.remaining === 0) this._settleCall(call);
  }

  _settleCall(call) {
    call.rejects.sort((a, b) => a.index - b.index);
    call.resolve({
      count: call.count,
      acked: call.count - call.rejects.length - call.dropped,
      rejects: call.rejects,
      dropped: call.dropped,
    });
    this._checkIdle();
  }

  _idle() {
    return this._queue.length === 0 && this._batch === null;
  }

  _checkIdle() {
    if (this._idle()) for (const w of this._waiters.splice(0)) w.resolve();
  }

  // ------------------------------------------------------------------ stopping

  _fail(err) {
    this._fatal = err;
    this._stop(err);
    if (this.listenerCount("error") > 0) this.emit("error", err);
  }

  _stop(err) {
    this._closing = true;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    if (this._backoffTimer) {
      clearTimeout(this._backoffTimer);
      this._backoffWake?.();
    }
    const s = this._session;
    if (s && !s.socket.destroyed) {
      if (!this._fatal && s.conn.state !== "closed") {
        try {
          s.socket.end(s.conn.send({ type: "BYE", reason: "client closing" }));
          // The collector closes its side after BYE; do not wait for it forever.
          setTimeout(() => s.socket.destroy(), 2000).unref();
        } catch {
          s.socket.destroy();
        }
      } else {
        s.socket.destroy();
      }
    }
    const calls = new Set();
    if (this._batch) for (const e of this._batch.entries) calls.add(e.call);
    while (this._queue.length) calls.add(this._queue.shift().call);
    this._batch = null;
    for (const c of calls) c.reject(err);
    for (const w of this._waiters.splice(0)) w.reject(err);
    for (const w of this._readyWaiters.splice(0)) w.reject(err);
  }
}
