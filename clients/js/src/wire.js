// Wire protocol v1 (with the additive v1.1 fields), sans-IO: frames, messages and the
// connection state machine. The specification is docs/protocol.md; the reference
// implementation is schemas/wire.py, which this module follows. No sockets, timers or
// logging here: client.js moves bytes in and out of a Connection.
//
// Frame: 4-byte big-endian body length N, then N bytes holding one msgpack array
// [type, field1, field2, ...]. Messages (fields after the type code; * = optional):
//   1 HELLO    version, deviceId, token, agent*, agentVersion*, dropped*, stream* (v1.1)
//   2 WELCOME  version, lastSeq, maxFrameBytes*, maxBatchReadings*, heartbeatMs*, minor* (v1.1)
//   3 BATCH    seq, readings
//   4 ACK      seq, accepted, duplicate, rejects [[index, code, path, message], ...]
//   5 RETRY    seq, reason, retryAfterMs
//   6 PING     nonce*          7 PONG  nonce*
//   8 ERROR    code, message*, fatal*, seq* (v1.1)
//   9 BYE      reason*
// Receivers ignore fields after the last one they know, so a v1.0 collector ignores the
// HELLO stream and this module reads a v1.0 WELCOME (no minor) and ERROR (no seq) alike.
//
// State machine (docs/protocol.md §9): await_hello -> await_welcome -> ready -> closed.

import { MalformedError, MAX_INT64, decodeOne, encode, scanBody, Encoded } from "./msgpack.js";

export const PROTOCOL_VERSION = 1;
export const FRAME_HEADER_BYTES = 4;
export const MAX_FRAME_BYTES = 1 << 20; // 1 MiB unless WELCOME says otherwise
export const MAX_BATCH_READINGS = 10000;
export const BAD_FRAME_BUDGET = 16; // bad frames survived per connection
export const HEARTBEAT_MS = 15000; // default heartbeat period announced in WELCOME

export const MessageType = Object.freeze({
  HELLO: 1,
  WELCOME: 2,
  BATCH: 3,
  ACK: 4,
  RETRY: 5,
  PING: 6,
  PONG: 7,
  ERROR: 8,
  BYE: 9,
});
const TYPE_NAMES = Object.fromEntries(Object.entries(MessageType).map(([k, v]) => [v, k]));

export const State = Object.freeze({
  AWAIT_HELLO: "await_hello",
  AWAIT_WELCOME: "await_welcome",
  READY: "ready",
  CLOSED: "closed",
});

// ERROR codes (docs/protocol.md §7; session_replaced is v1.1).
export const ErrorCode = Object.freeze({
  MALFORMED_FRAME: "malformed_frame",
  BAD_MESSAGE: "bad_message",
  UNEXPECTED_MESSAGE: "unexpected_message",
  FRAME_TOO_LARGE: "frame_too_large",
  TOO_MANY_BAD_FRAMES: "too_many_bad_frames",
  TRUNCATED_FRAME: "truncated_frame",
  UNSUPPORTED_VERSION: "unsupported_version",
  AUTH_FAILED: "auth_failed",
  HANDSHAKE_TIMEOUT: "handshake_timeout",
  IDLE_TIMEOUT: "idle_timeout",
  SERVER_BUSY: "server_busy",
  SHUTTING_DOWN: "shutting_down",
  SESSION_REPLACED: "session_replaced",
  INTERNAL_ERROR: "internal_error",
});

/** The peer sent something illegal (`fatal`: the connection is now closed). */
export class ProtocolError extends Error {
  constructor(code, message, fatal) {
    super(`${code}: ${message}`);
    this.name = "ProtocolError";
    this.code = code;
    this.detail = message;
    this.fatal = fatal;
  }
}

/** Our own code misused this API (e.g. sent a message not allowed in this state). */
export class LocalProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = "LocalProtocolError";
  }
}

/** Returned by Connection.nextEvent when no complete frame is buffered. */
export const NEED_DATA = Symbol("NEED_DATA");
/** Returned by Connection.nextEvent once the peer closed the stream at a frame boundary. */
export const CLOSED = Symbol("CLOSED");

// ---------------------------------------------------------------------------- messages

// Field names in wire order, per type; `opt` gives the default of an optional field.
const FIELDS = {
  HELLO: [
    ["version", "uint"],
    ["deviceId", "str"],
    ["token", "str"],
    ["agent", "str", ""],
    ["agentVersion", "str", ""],
    ["dropped", "uint", 0],
    ["stream", "str", ""],
  ],
  WELCOME: [
    ["version", "uint"],
    ["lastSeq", "uint"],
    ["maxFrameBytes", "uint", MAX_FRAME_BYTES],
    ["maxBatchReadings", "uint", MAX_BATCH_READINGS],
    ["heartbeatMs", "uint", HEARTBEAT_MS],
    ["minor", "uint", 0],
  ],
  BATCH: [
    ["seq", "uint"],
    ["readings", "array"],
  ],
  ACK: [
    ["seq", "uint"],
    ["accepted", "uint"],
    ["duplicate", "uint"],
    ["rejects", "array"],
  ],
  RETRY: [
    ["seq", "uint"],
    ["reason", "str"],
    ["retryAfterMs", "uint"],
  ],
  PING: [["nonce", "uint", 0]],
  PONG: [["nonce", "uint", 0]],
  ERROR: [
    ["code", "str"],
    ["message", "str", ""],
    ["fatal", "bool", true],
    ["seq", "uint", 0],
  ],
  BYE: [["reason", "str", ""]],
};

// Trailing fields a sender leaves out when they hold their default: the v1.1 additions, so
// that a message without them is byte-identical to v1.0.
const V11_FIELDS = { HELLO: "stream", WELCOME: "minor", ERROR: "seq" };

function bad(message) {
  return new ProtocolError(ErrorCode.BAD_MESSAGE, message, false);
}

function isUint(v) {
  if (typeof v === "number") return Number.isInteger(v) && v >= 0;
  if (typeof v === "bigint") return v >= 0n && v <= MAX_INT64;
  return false;
}

function checkField(type, name, kind, v, mkind) {
  switch (kind) {
    case "uint":
      // mkind: the msgpack type the scan saw, so a float 1.0 is not taken for the int 1.
      if ((mkind !== undefined && mkind !== "int") || !isUint(v)) {
        throw bad(`${type}.${name} must be an integer in 0..2^63-1`);
      }
      return;
    case "str":
      if (typeof v !== "string") throw bad(`${type}.${name} must be a string`);
      return;
    case "bool":
      if (typeof v !== "boolean") throw bad(`${type}.${name} must be a boolean`);
      return;
    case "array":
      if (!Array.isArray(v)) throw bad(`${type}.${name} must be an array`);
      return;
  }
}

/**
 * Turn one decoded msgpack value into a message object {type, ...fields}.
 * `kinds`: the msgpack type of each top-level field (from scanBody), when known.
 * Throws ProtocolError(bad_message, non-fatal).
 */
export function parseMessage(value, kinds = null) {
  if (!Array.isArray(value) || value.length === 0) throw bad("a message must be a non-empty array");
  const code = value[0];
  if (typeof code !== "number" || !Number.isInteger(code) || (kinds && kinds[0] !== "int")) {
    throw bad("the first element of a message must be its integer type code");
  }
  const type = TYPE_NAMES[code];
  if (type === undefined) throw bad(`unknown message type ${code}`);
  const msg = { type };
  FIELDS[type].forEach(([name, kind, dflt], j) => {
    const i = j + 1;
    if (i >= value.length) {
      if (dflt === undefined) throw bad(`${type}: missing field ${i} (${name})`);
      msg[name] = dflt;
      return;
    }
    checkField(type, name, kind, value[i], kinds ? kinds[i] : undefined);
    msg[name] = value[i];
  });
  if (type === "ACK") {
    msg.rejects = msg.rejects.map((r, i) => {
      if (!Array.isArray(r) || r.length < 4) throw bad(`ACK.rejects[${i}] must be an array of 4`);
      const [index, rcode, path, message] = r;
      checkField("ACK", `rejects[${i}].index`, "uint", index);
      for (const [n, s] of [["code", rcode], ["path", path], ["message", message]]) {
        checkField("ACK", `rejects[${i}].${n}`, "str", s);
      }
      return Object.freeze({ index, code: rcode, path, message });
    });
    Object.freeze(msg.rejects);
  }
  return Object.freeze(msg);
}

/** Decode one frame body into a message. Throws ProtocolError (non-fatal). */
export function decodeBody(body) {
  let kinds;
  let value;
  try {
    kinds = scanBody(body);
    value = decodeOne(body);
  } catch (err) {
    if (err instanceof MalformedError) {
      throw new ProtocolError(ErrorCode.MALFORMED_FRAME, `frame body is not valid msgpack: ${err.message}`, false);
    }
    throw err;
  }
  return parseMessage(value, kinds);
}

/** The message as its wire array (BATCH readings may be Encoded bytes or wire arrays). */
export function toArray(msg) {
  const fields = FIELDS[msg.type];
  if (fields === undefined) throw new LocalProtocolError(`not a protocol message: ${msg.type}`);
  const out = [MessageType[msg.type]];
  for (const [name, , dflt] of fields) {
    let v = msg[name];
    if (v === undefined) {
      if (dflt === undefined) throw new LocalProtocolError(`${msg.type}.${name} is required`);
      v = dflt;
    }
    out.push(v);
  }
  const v11 = V11_FIELDS[msg.type];
  if (v11 !== undefined && (out[out.length - 1] === "" || out[out.length - 1] === 0)) out.pop();
  if (msg.type === "ACK") {
    out[4] = out[4].map((r) => (Array.isArray(r) ? r : [r.index, r.code, r.path, r.message]));
  }
  return out;
}

/** Encode a message as a msgpack body (no length prefix). */
export function encodeBody(msg) {
  return encode(toArray(msg));
}

/** Prefix a body with its 4-byte big-endian length. */
export function frame(body) {
  const out = new Uint8Array(FRAME_HEADER_BYTES + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, FRAME_HEADER_BYTES);
  return out;
}

/** Encode a message as a complete frame. */
export function encodeFrame(msg) {
  return frame(encodeBody(msg));
}

/** A BATCH frame from readings already encoded one by one (see readings.js). */
export function encodeBatchFrame(seq, encodedReadings) {
  return encodeFrame({ type: "BATCH", seq, readings: encodedReadings.map((b) => new Encoded(b)) });
}

// ---------------------------------------------------------------------------- connection

const AGENT_SENDS = {
  [State.AWAIT_HELLO]: ["HELLO", "BYE", "ERROR"],
  [State.AWAIT_WELCOME]: ["BYE", "ERROR", "PING", "PONG"],
  [State.READY]: ["BATCH", "PING", "PONG", "BYE", "ERROR"],
};
const COLLECTOR_SENDS = {
  [State.AWAIT_HELLO]: ["ERROR", "BYE"],
  [State.AWAIT_WELCOME]: ["WELCOME", "ERROR", "BYE"],
  [State.READY]: ["ACK", "RETRY", "PING", "PONG", "ERROR", "BYE"],
};

/**
 * One side ("agent" or "collector") of one connection, without the I/O: feed received bytes
 * with receiveData (null for end of stream), pull messages with nextEvent until it returns
 * NEED_DATA, and turn outgoing messages into bytes with send.
 */
export class Connection {
  constructor(role, { maxFrameBytes = MAX_FRAME_BYTES, badFrameBudget = BAD_FRAME_BUDGET } = {}) {
    if (role !== "agent" && role !== "collector") throw new LocalProtocolError(`unknown role ${role}`);
    this.role = role;
    this.state = State.AWAIT_HELLO;
    this.maxFrameBytes = maxFrameBytes;
    this.badFrameBudget = badFrameBudget;
    this.badFrames = 0;
    this.bytesReceived = 0;
    this._buf = new Uint8Array(0);
    this._pos = 0;
    this._eof = false;
    this._sends = role === "agent" ? AGENT_SENDS : COLLECTOR_SENDS;
    this._peerSends = role === "agent" ? COLLECTOR_SENDS : AGENT_SENDS;
  }

  /** Buffer bytes from the peer; null or an empty array means the peer closed its side. */
  receiveData(data) {
    if (data === null || data.length === 0) {
      this._eof = true;
      return;
    }
    if (this.state === State.CLOSED) return;
    this.bytesReceived += data.length;
    const rest = this._buf.subarray(this._pos);
    const next = new Uint8Array(rest.length + data.length);
    next.set(rest, 0);
    next.set(data, rest.length);
    this._buf = next;
    this._pos = 0;
  }

  /**
   * The next message, NEED_DATA, or CLOSED at a clean end of stream.
   * Throws ProtocolError for a bad frame; when `.fatal` the state is now closed.
   */
  nextEvent() {
    if (this.state === State.CLOSED) return CLOSED;
    const avail = this._buf.length - this._pos;
    if (avail < FRAME_HEADER_BYTES) {
      if (this._eof) {
        if (avail) this._fail(ErrorCode.TRUNCATED_FRAME, "connection closed inside a frame header");
        this.state = State.CLOSED;
        return CLOSED;
      }
      return NEED_DATA;
    }
    const view = new DataView(this._buf.buffer, this._buf.byteOffset + this._pos, 4);
    const length = view.getUint32(0);
    if (length > this.maxFrameBytes) {
      this._fail(ErrorCode.FRAME_TOO_LARGE, `declared frame length ${length} exceeds ${this.maxFrameBytes}`);
    }
    if (avail < FRAME_HEADER_BYTES + length) {
      if (this._eof) {
        this._fail(ErrorCode.TRUNCATED_FRAME, `connection closed after ${avail - 4} of ${length} body bytes`);
      }
      return NEED_DATA;
    }
    const start = this._pos + FRAME_HEADER_BYTES;
    this._pos = start + length;
    if (length === 0) return this._badFrame(ErrorCode.MALFORMED_FRAME, "empty frame body");
    let msg;
    try {
      msg = decodeBody(this._buf.subarray(start, start + length));
    } catch (err) {
      if (err instanceof ProtocolError) return this._badFrame(err.code, err.detail);
      throw err;
    }
    this._checkReceive(msg);
    return msg;
  }

  _fail(code, message) {
    this.state = State.CLOSED;
    this._buf = new Uint8Array(0);
    this._pos = 0;
    throw new ProtocolError(code, message, true);
  }

  _badFrame(code, message) {
    this.badFrames += 1;
    if (this.badFrames > this.badFrameBudget) {
      this._fail(ErrorCode.TOO_MANY_BAD_FRAMES, `${message} (bad-frame budget of ${this.badFrameBudget} spent)`);
    }
    throw new ProtocolError(code, message, false);
  }

  _checkReceive(msg) {
    if (!this._peerSends[this.state].includes(msg.type)) {
      if (this.state !== State.READY) {
        this._fail(ErrorCode.UNEXPECTED_MESSAGE, `${msg.type} is not allowed in state ${this.state}`);
      }
      this._badFrame(ErrorCode.UNEXPECTED_MESSAGE, `${msg.type} is not allowed from the peer`);
    }
    this._advance(msg);
  }

  /** Encode a message as a frame, checking that this role may send it now. */
  send(msg) {
    if (this.state === State.CLOSED) {
      if (msg.type === "ERROR" || msg.type === "BYE") return encodeFrame(msg);
      throw new LocalProtocolError(`cannot send ${msg.type}: connection closed`);
    }
    if (!this._sends[this.state].includes(msg.type)) {
      throw new LocalProtocolError(`the ${this.role} cannot send ${msg.type} in state ${this.state}`);
    }
    const data = encodeFrame(msg);
    if (data.length - FRAME_HEADER_BYTES > this.maxFrameBytes) {
      throw new LocalProtocolError(`${msg.type} frame of ${data.length} bytes exceeds ${this.maxFrameBytes}`);
    }
    this._advance(msg);
    return data;
  }

  _advance(msg) {
    if (msg.type === "HELLO") this.state = State.AWAIT_WELCOME;
    else if (msg.type === "WELCOME") this.state = State.READY;
    else if (msg.type === "BYE" || (msg.type === "ERROR" && msg.fatal !== false)) this.state = State.CLOSED;
  }
}
