// Readings as the agent side builds them, and their wire form [sensor, kind, ts, value, unit,
// tags] (docs/protocol.md §4). The collector validates every reading; this module checks only
// what it needs to encode one (so an invalid reading reaches the collector and comes back as
// a reject with the same code and path as from any other client).
//
// Numbers: a JavaScript number cannot tell 104.0 from 104, so the kind decides.
//   - kinds whose value is a number (temperature, humidity, ..., gauge, and the fields of gps
//     and acceleration; more with the `floatKinds` option): plain numbers go as float64;
//   - every other kind (counter, user-defined integer kinds): integral numbers go as msgpack
//     ints, fractional ones as float64 (which an integer kind then rejects as wrong_type);
//   - `float64(x)` and `int(x)` (or a bigint) override the rule for one value.
// No I/O here.

import { Float64, encode } from "./msgpack.js";

/** Built-in kinds whose value is a number: plain numbers are sent as float64. */
export const NUMBER_KINDS = Object.freeze(
  new Set(["temperature", "humidity", "pressure", "voltage", "current", "power", "energy", "gauge"]),
);
/** Built-in kinds whose value is a map of numbers. */
export const NUMBER_MAP_KINDS = Object.freeze(new Set(["gps", "acceleration"]));

const NS_PER_MS = 1000000n;

/** Nanoseconds since the epoch for a Date or a number of milliseconds. */
export function nsFromMs(ms) {
  if (ms instanceof Date) ms = ms.getTime();
  if (typeof ms !== "number" || !Number.isFinite(ms)) throw new TypeError("nsFromMs needs a finite number or a Date");
  const whole = Math.floor(ms);
  return BigInt(whole) * NS_PER_MS + BigInt(Math.round((ms - whole) * 1e6));
}

/** Now, in nanoseconds since the epoch (millisecond resolution). */
export function nowNs() {
  return BigInt(Date.now()) * NS_PER_MS;
}

function asFloat(v) {
  return typeof v === "number" ? new Float64(v) : v;
}

function wireValue(kind, value, floatKinds) {
  if (typeof value === "number" && (NUMBER_KINDS.has(kind) || floatKinds.has(kind))) return new Float64(value);
  if (value !== null && typeof value === "object" && !Array.isArray(value) && NUMBER_MAP_KINDS.has(kind)) {
    const out = {};
    for (const [k, v] of value instanceof Map ? value : Object.entries(value)) out[k] = asFloat(v);
    return out;
  }
  return value;
}

function wireTs(ts) {
  if (typeof ts === "bigint") return ts;
  if (ts instanceof Date) return nsFromMs(ts);
  if (ts === undefined || ts === null) return nowNs();
  if (typeof ts === "number") {
    // Numbers cannot hold nanoseconds of today (2^53 ns is 104 days): say which unit.
    throw new TypeError("reading.ts must be a bigint of nanoseconds or a Date (use nsFromMs(ms))");
  }
  return ts; // Int or another explicit form: encoded as given
}

/**
 * The wire array of one reading.
 * reading: {sensor, kind, value, ts?: bigint ns | Date (default: now), unit?: string|null,
 * tags?: {key: value}|null}. Options: floatKinds (extra kinds whose numbers are float64).
 */
export function toWire(reading, { floatKinds = new Set() } = {}) {
  if (reading === null || typeof reading !== "object") throw new TypeError("a reading must be an object");
  const { sensor, kind, value } = reading;
  if (value === undefined) throw new TypeError("reading.value is required");
  return [
    sensor,
    kind,
    wireTs(reading.ts),
    wireValue(kind, value, floatKinds),
    reading.unit ?? null,
    reading.tags ?? null,
  ];
}

/** The msgpack bytes of one reading (see toWire). */
export function encodeReading(reading, options) {
  return encode(toWire(reading, options));
}
