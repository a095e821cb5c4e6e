// msgpack for the wire protocol: an encoder that says exactly which form each number takes,
// and a decoder that checks every limit on the bytes before @msgpack/msgpack builds values.
//
// Why an own encoder: a JavaScript number cannot tell 104.0 from 104, and the protocol cares
// (v1.1: float values are always float64, 0xcb; "integer" kinds accept only msgpack ints).
// Values are encoded as follows:
//   Float64 (from `float64(x)`)    float64, always
//   Int (from `int(x)`), bigint    the shortest msgpack int form
//   number, integral               the shortest msgpack int form
//   number, fractional/NaN/inf     float64
//   string, boolean, null          str (shortest form), true/false, nil
//   Array, plain object, Map       array / map with string keys
// The reading layer (readings.js) wraps numbers of number kinds in Float64 before this runs.
//
// Why a scan before decoding: @msgpack/msgpack has one array limit for every level and
// preallocates a declared array, so a few bytes of nested headers could cost gigabytes. The
// scan walks the body's headers first (no allocation) with the limits of docs/protocol.md §8,
// and records the msgpack type of each message field so ints and floats stay distinguishable.
// This module does no I/O.

import { Decoder, ExtensionCodec } from "@msgpack/msgpack";

export const MAX_STR_BYTES = 4096; // longest str anywhere (text values: 1024 chars x 4 bytes)
export const MAX_MAP_ENTRIES = 64; // values and tags are small by design
export const MAX_BIN_BYTES = 0; // the protocol carries no binary data
export const MAX_EXT_BYTES = 12; // the Timestamp ext is at most 12 bytes
export const MAX_INNER_ARRAY_LEN = 64; // every array but BATCH readings / ACK rejects
export const MAX_MESSAGE_FIELDS = 32; // v1 messages have <= 7 fields; room for additive ones
export const MAX_BATCH_READINGS = 10000; // longest BATCH readings / ACK rejects list
export const MSGPACK_MAX_DEPTH = 1024; // nesting a decoder refuses outright
export const MAX_INT64 = (1n << 63n) - 1n;

/** A number that is always encoded as float64 (0xcb). */
export class Float64 {
  constructor(value) {
    if (typeof value !== "number") throw new TypeError(`float64() needs a number, got ${typeof value}`);
    this.value = value;
    Object.freeze(this);
  }
}

/** An integer that is always encoded as a msgpack int (shortest form). */
export class Int {
  constructor(value) {
    if (typeof value === "number") {
      if (!Number.isSafeInteger(value)) {
        throw new RangeError(`int() needs a safe integer or a bigint, got ${value}`);
      }
      value = BigInt(value);
    } else if (typeof value !== "bigint") {
      throw new TypeError(`int() needs an integer, got ${typeof value}`);
    }
    this.value = value;
    Object.freeze(this);
  }
}

/** Mark a number to be encoded as float64. */
export const float64 = (x) => new Float64(x);
/** Mark a number (safe integer) or bigint to be encoded as a msgpack int. */
export const int = (x) => new Int(x);

export class EncodeError extends TypeError {}

const utf8 = new TextEncoder();

/** Growable byte buffer for the encoder. */
class Out {
  constructor(size = 256) {
    this.buf = new Uint8Array(size);
    this.view = new DataView(this.buf.buffer);
    this.len = 0;
  }
  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(b) {
    this.reserve(1);
    this.buf[this.len++] = b;
  }
  u8u8(a, b) {
    this.reserve(2);
    this.buf[this.len++] = a;
    this.buf[this.len++] = b;
  }
  head16(tag, v) {
    this.reserve(3);
    this.buf[this.len] = tag;
    this.view.setUint16(this.len + 1, v);
    this.len += 3;
  }
  head32(tag, v) {
    this.reserve(5);
    this.buf[this.len] = tag;
    this.view.setUint32(this.len + 1, v);
    this.len += 5;
  }
  bytes(b) {
    this.reserve(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }
  result() {
    return this.buf.slice(0, this.len);
  }
}

function encodeInt(out, v) {
  // v: bigint. Shortest form, as the reference encoder (msgpack-python) writes it.
  if (v >= 0n) {
    if (v < 128n) out.u8(Number(v));
    else if (v < 256n) out.u8u8(0xcc, Number(v));
    else if (v < 65536n) out.head16(0xcd, Number(v));
    else if (v < 4294967296n) out.head32(0xce, Number(v));
    else if (v < 18446744073709551616n) {
      out.reserve(9);
      out.buf[out.len] = 0xcf;
      out.view.setBigUint64(out.len + 1, v);
      out.len += 9;
    } else throw new EncodeError(`integer ${v} does not fit in uint64`);
  } else if (v >= -32n) out.u8(Number(v) & 0xff);
  else if (v >= -128n) out.u8u8(0xd0, Number(v) & 0xff);
  else if (v >= -32768n) {
    out.reserve(3);
    out.buf[out.len] = 0xd1;
    out.view.setInt16(out.len + 1, Number(v));
    out.len += 3;
  } else if (v >= -2147483648n) {
    out.reserve(5);
    out.buf[out.len] = 0xd2;
    out.view.setInt32(out.len + 1, Number(v));
    out.len += 5;
  } else if (v >= -(1n << 63n)) {
    out.reserve(9);
    out.buf[out.len] = 0xd3;
    out.view.setBigInt64(out.len + 1, v);
    out.len += 9;
  } else throw new EncodeError(`integer ${v} does not fit in int64`);
}

function encodeFloat64(out, x) {
  out.reserve(9);
  out.buf[out.len] = 0xcb;
  out.view.setFloat64(out.len + 1, x);
  out.len += 9;
}

function encodeStr(out, s) {
  const b = utf8.encode(s);
  const n = b.length;
  if (n < 32) out.u8(0xa0 | n);
  else if (n < 256) out.u8u8(0xd9, n);
  else if (n < 65536) out.head16(0xda, n);
  else out.head32(0xdb, n);
  out.bytes(b);
}

function encodeArrayHead(out, n) {
  if (n < 16) out.u8(0x90 | n);
  else if (n < 65536) out.head16(0xdc, n);
  else out.head32(0xdd, n);
}

function encodeMapHead(out, n) {
  if (n < 16) out.u8(0x80 | n);
  else if (n < 65536) out.head16(0xde, n);
  else out.head32(0xdf, n);
}

function encodeValue(out, v, depth) {
  if (depth > MSGPACK_MAX_DEPTH) throw new EncodeError("value nested too deeply");
  if (v === null || v === undefined) {
    if (v === undefined) throw new EncodeError("undefined cannot be encoded (use null for nil)");
    out.u8(0xc0);
  } else if (v === true) out.u8(0xc3);
  else if (v === false) out.u8(0xc2);
  else if (typeof v === "number") {
    if (Number.isSafeInteger(v) && !Object.is(v, -0)) encodeInt(out, BigInt(v));
    else encodeFloat64(out, v);
  } else if (typeof v === "bigint") encodeInt(out, v);
  else if (typeof v === "string") encodeStr(out, v);
  else if (v instanceof Float64) encodeFloat64(out, v.value);
  else if (v instanceof Int) encodeInt(out, v.value);
  else if (v instanceof Encoded) out.bytes(v.bytes);
  else if (Array.isArray(v)) {
    encodeArrayHead(out, v.length);
    for (const item of v) encodeValue(out, item, depth + 1);
  } else if (v instanceof Map) {
    encodeMapHead(out, v.size);
    for (const [k, item] of v) {
      if (typeof k !== "string") throw new EncodeError(`map keys must be strings, got ${typeof k}`);
      encodeStr(out, k);
      encodeValue(out, item, depth + 1);
    }
  } else if (typeof v === "object" && (Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null)) {
    const keys = Object.keys(v);
    encodeMapHead(out, keys.length);
    for (const k of keys) {
      encodeStr(out, k);
      encodeValue(out, v[k], depth + 1);
    }
  } else {
    throw new EncodeError(`cannot encode a value of type ${v?.constructor?.name ?? typeof v}`);
  }
}

/** Bytes already encoded as one msgpack value (spliced in as they are). */
export class Encoded {
  constructor(bytes) {
    this.bytes = bytes;
    Object.freeze(this);
  }
}

/** Encode one value as msgpack bytes (rules in the module comment). */
export function encode(value) {
  const out = new Out();
  encodeValue(out, value, 0);
  return out.result();
}

// ------------------------------------------------------------------------------ decoding

/** The body is not exactly one valid msgpack value within the limits. */
export class MalformedError extends Error {}

const strict = new TextDecoder("utf-8", { fatal: true });

// Fixed sizes of the simple formats after their type byte; -1: not a simple format.
function scanValue(b, view, pos, depth, arrayLimit, kinds) {
  if (depth > MSGPACK_MAX_DEPTH) throw new MalformedError(`nesting deeper than ${MSGPACK_MAX_DEPTH}`);
  if (pos >= b.length) throw new MalformedError("value truncated");
  const t = b[pos];
  const need = (n) => {
    if (pos + 1 + n > b.length) throw new MalformedError("value truncated");
  };
  const kind = (k) => kinds?.push(k);
  if (t <= 0x7f || t >= 0xe0) return kind("int"), pos + 1;
  if (t >= 0x80 && t <= 0x8f) return kind("map"), scanMap(b, view, pos + 1, t & 0x0f, depth);
  if (t >= 0x90 && t <= 0x9f) return kind("array"), scanArray(b, view, pos + 1, t & 0x0f, depth, arrayLimit);
  if (t >= 0xa0 && t <= 0xbf) return kind("str"), scanStr(b, pos + 1, t & 0x1f);
  switch (t) {
    case 0xc0:
      return kind("nil"), pos + 1;
    case 0xc2:
    case 0xc3:
      return kind("bool"), pos + 1;
    case 0xc4:
    case 0xc5:
    case 0xc6: {
      const w = 1 << (t - 0xc4);
      need(w);
      const n = w === 1 ? b[pos + 1] : w === 2 ? view.getUint16(pos + 1) : view.getUint32(pos + 1);
      if (n > MAX_BIN_BYTES) throw new MalformedError(`bin of ${n} bytes (the protocol uses none)`);
      return kind("bin"), pos + 1 + w + n;
    }
    case 0xc7:
    case 0xc8:
    case 0xc9: {
      const w = 1 << (t - 0xc7);
      need(w + 1);
      const n = w === 1 ? b[pos + 1] : w === 2 ? view.getUint16(pos + 1) : view.getUint32(pos + 1);
      return kind(scanExt(b, view, pos + 1 + w, n)), pos + 2 + w + n;
    }
    case 0xca:
      return need(4), kind("float"), pos + 5;
    case 0xcb:
      return need(8), kind("float"), pos + 9;
    case 0xcc:
    case 0xd0:
      return need(1), kind("int"), pos + 2;
    case 0xcd:
    case 0xd1:
      return need(2), kind("int"), pos + 3;
    case 0xce:
    case 0xd2:
      return need(4), kind("int"), pos + 5;
    case 0xcf:
    case 0xd3:
      return need(8), kind("int"), pos + 9;
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8: {
      const n = 1 << (t - 0xd4);
      need(1);
      return kind(scanExt(b, view, pos + 1, n)), pos + 2 + n;
    }
    case 0xd9:
      return need(1), kind("str"), scanStr(b, pos + 2, b[pos + 1]);
    case 0xda:
      return need(2), kind("str"), scanStr(b, pos + 3, view.getUint16(pos + 1));
    case 0xdb:
      return need(4), kind("str"), scanStr(b, pos + 5, view.getUint32(pos + 1));
    case 0xdc:
      return need(2), kind("array"), scanArray(b, view, pos + 3, view.getUint16(pos + 1), depth, arrayLimit);
    case 0xdd:
      return need(4), kind("array"), scanArray(b, view, pos + 5, view.getUint32(pos + 1), depth, arrayLimit);
    case 0xde:
      return need(2), kind("map"), scanMap(b, view, pos + 3, view.getUint16(pos + 1), depth);
    case 0xdf:
      return need(4), kind("map"), scanMap(b, view, pos + 5, view.getUint32(pos + 1), depth);
    default:
      throw new MalformedError(`byte 0x${t.toString(16)} is not a msgpack type`);
  }
}

function scanStr(b, pos, n) {
  if (n > MAX_STR_BYTES) throw new MalformedError(`str of ${n} bytes exceeds ${MAX_STR_BYTES}`);
  if (pos + n > b.length) throw new MalformedError("str truncated");
  try {
    strict.decode(b.subarray(pos, pos + n));
  } catch {
    throw new MalformedError("str is not valid UTF-8");
  }
  return pos + n;
}

// `pos` is at the ext type byte; returns "timestamp" or "ext".
function scanExt(b, view, pos, n) {
  if (n > MAX_EXT_BYTES) throw new MalformedError(`ext of ${n} bytes exceeds ${MAX_EXT_BYTES}`);
  if (pos + 1 + n > b.length) throw new MalformedError("ext truncated");
  const type = view.getInt8(pos);
  if (type !== -1) return "ext";
  if (n !== 4 && n !== 8 && n !== 12) throw new MalformedError(`Timestamp ext of ${n} bytes (4, 8 or 12)`);
  if (n === 8 && view.getUint32(pos + 1) >>> 2 > 999999999) throw new MalformedError("Timestamp nanoseconds over 999999999");
  if (n === 12 && view.getUint32(pos + 1) > 999999999) throw new MalformedError("Timestamp nanoseconds over 999999999");
  return "timestamp";
}

function scanArray(b, view, pos, n, depth, limit) {
  if (n > limit) throw new MalformedError(`array of ${n} exceeds the limit of ${limit}`);
  for (let i = 0; i < n; i++) pos = scanValue(b, view, pos, depth + 1, MAX_INNER_ARRAY_LEN, null);
  return pos;
}

function scanMap(b, view, pos, n, depth) {
  if (n > MAX_MAP_ENTRIES) throw new MalformedError(`map of ${n} exceeds the limit of ${MAX_MAP_ENTRIES}`);
  for (let i = 0; i < n; i++) {
    const kinds = [];
    pos = scanValue(b, view, pos, depth + 1, MAX_INNER_ARRAY_LEN, kinds);
    if (kinds[0] !== "str") throw new MalformedError("map keys must be strings");
    pos = scanValue(b, view, pos, depth + 1, MAX_INNER_ARRAY_LEN, null);
  }
  return pos;
}

// Position of the one long list in the messages that carry one: BATCH readings, ACK rejects.
const LIST_FIELD = new Map([
  [3, 2],
  [4, 4],
]);

/**
 * Check one frame body against the limits without building any value.
 * Returns the msgpack type of each top-level message field ("int", "float", "str", ...),
 * or null when the body is not an array (that is a bad message, not a malformed frame).
 * Throws MalformedError.
 */
export function scanBody(b) {
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let pos = 0;
  let kinds = null;
  const t = b[0];
  let n = -1;
  if (t >= 0x90 && t <= 0x9f) (n = t & 0x0f), (pos = 1);
  else if (t === 0xdc && b.length >= 3) (n = view.getUint16(1)), (pos = 3);
  else if (t === 0xdd && b.length >= 5) (n = view.getUint32(1)), (pos = 5);
  if (n < 0) {
    pos = scanValue(b, view, 0, 0, MAX_INNER_ARRAY_LEN, null);
  } else {
    if (n > MAX_MESSAGE_FIELDS) throw new MalformedError(`message of ${n} fields exceeds ${MAX_MESSAGE_FIELDS}`);
    kinds = [];
    let code = null;
    for (let i = 0; i < n; i++) {
      const long = i > 0 && code !== null && LIST_FIELD.get(code) === i;
      const start = pos;
      pos = scanValue(b, view, pos, 1, long ? MAX_BATCH_READINGS : MAX_INNER_ARRAY_LEN, kinds);
      if (i === 0 && kinds[0] === "int") code = decodeOne(b.subarray(start, pos));
    }
  }
  if (pos !== b.length) throw new MalformedError(`${b.length - pos} trailing bytes after the message`);
  return kinds;
}

// Timestamp ext (-1) decodes to bigint nanoseconds since the epoch (may be negative).
const extensions = new ExtensionCodec();
extensions.register({
  type: -1,
  encode: () => null,
  decode(data) {
    const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
    if (data.length === 4) return BigInt(v.getUint32(0)) * 1000000000n;
    if (data.length === 8) {
      const hi = v.getUint32(0);
      const lo = v.getUint32(4);
      const sec = BigInt(hi & 0x3) * 4294967296n + BigInt(lo);
      return sec * 1000000000n + BigInt(hi >>> 2);
    }
    return v.getBigInt64(4) * 1000000000n + BigInt(v.getUint32(0));
  },
});

function mapKey(key) {
  if (typeof key !== "string") throw new MalformedError("map keys must be strings");
  return key;
}

const decoder = new Decoder({
  extensionCodec: extensions,
  useBigInt64: true,
  maxStrLength: MAX_STR_BYTES,
  maxBinLength: MAX_EXT_BYTES, // ext payloads are read as bin; the scan refuses any bin value
  maxArrayLength: MAX_BATCH_READINGS,
  maxMapLength: MAX_MAP_ENTRIES,
  maxExtLength: MAX_EXT_BYTES,
  mapKeyConverter: mapKey,
});

// int64/uint64 forms decode to bigint; those within 2^53 become plain numbers again.
function normalize(v) {
  if (typeof v === "bigint") {
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) v[i] = normalize(v[i]);
  } else if (v !== null && typeof v === "object" && !(v instanceof Uint8Array)) {
    for (const k of Object.keys(v)) v[k] = normalize(v[k]);
  }
  return v;
}

/** Decode one msgpack value (integers beyond 2^53 stay bigints). Throws MalformedError. */
export function decodeOne(bytes) {
  try {
    return normalize(decoder.decode(bytes));
  } catch (err) {
    if (err instanceof MalformedError) throw err;
    throw new MalformedError(`not valid msgpack: ${err.message}`);
  }
}
