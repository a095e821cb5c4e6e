// The shared protocol test vectors (tests/vectors/README.md), run against this client's codec:
// byte-exact encoding of every canonical frame and of every reading, parsing of every valid
// frame, and the receiver's answer to every invalid byte stream.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { encode } from "../src/msgpack.js";
import { encodeReading } from "../src/readings.js";
import {
  CLOSED,
  Connection,
  NEED_DATA,
  ProtocolError,
  decodeBody,
  encodeBatchFrame,
  encodeFrame,
} from "../src/wire.js";
import { camel, hex, load, meta, plain, typed, unhex } from "./vectors.js";

const framesValid = load("frames_valid.json");
const framesInvalid = load("frames_invalid.json");
const readings = load("readings.json");

function message(v, conv) {
  const fields = Object.fromEntries(Object.entries(v.message.fields).map(([k, x]) => [camel(k), conv(x)]));
  if (v.message.type === "ACK") {
    fields.rejects = fields.rejects.map((r) => (conv === plain ? r : [r.index, r.code, r.path, r.message]));
  }
  return { type: v.message.type, ...fields };
}

describe("frames_valid.json", () => {
  test("has the worked example and enough vectors", () => {
    const names = framesValid.map((v) => v.name);
    for (const n of ["example/hello", "example/welcome", "example/batch", "example/ack"]) assert.ok(names.includes(n));
    assert.ok(framesValid.length >= 20);
  });

  for (const v of framesValid) {
    const { name, canonical, direction } = meta({ name: v.name, canonical: v.canonical, direction: v.direction });
    const bytes = unhex(v.hex);

    if (canonical) {
      test(`encode ${name} byte-exact`, () => {
        assert.equal(hex(encodeFrame(message(v, typed))), v.hex);
      });
    }

    test(`decode ${name}`, () => {
      const length = new DataView(bytes.buffer).getUint32(0);
      assert.equal(length, bytes.length - 4);
      const got = decodeBody(bytes.subarray(4));
      const want = message(v, plain);
      for (const [k, x] of Object.entries(want)) assert.deepStrictEqual(got[k], x, `${name}: field ${k}`);
    });

    if (direction !== "agent->collector") {
      test(`agent connection receives ${name} byte by byte`, () => {
        const conn = new Connection("agent");
        conn.state = v.message.type === "WELCOME" ? "await_welcome" : "ready";
        for (let i = 0; i < bytes.length - 1; i++) {
          conn.receiveData(bytes.subarray(i, i + 1));
          assert.equal(conn.nextEvent(), NEED_DATA);
        }
        conn.receiveData(bytes.subarray(bytes.length - 1));
        const got = conn.nextEvent();
        assert.equal(got.type, v.message.type);
        conn.receiveData(null);
        assert.equal(conn.nextEvent(), CLOSED);
      });
    }
  }
});

describe("frames_invalid.json", () => {
  for (const v of framesInvalid) {
    const { name, receiver, state, eof, expect } = meta(v);
    test(`${receiver} in ${state}: ${name}`, () => {
      const conn = new Connection(receiver);
      conn.state = state;
      conn.receiveData(unhex(v.hex));
      if (eof) conn.receiveData(null);
      for (const step of expect) {
        if (step.event !== undefined) {
          assert.equal(conn.nextEvent().type, step.event);
          continue;
        }
        assert.throws(
          () => conn.nextEvent(),
          (err) => err instanceof ProtocolError && err.code === step.error && err.fatal === step.fatal,
          `${name}: expected ${step.error} (fatal=${step.fatal})`,
        );
      }
      if (expect.at(-1).fatal) assert.equal(conn.state, "closed");
    });
  }
});

// Readings whose hex spells a number differently from the kind's rule of readings.js (an int
// for a number kind, a float for an integer kind): the explicit int()/float64() form gives
// their exact bytes; the plain-number form gives the kind's form, checked equal in value.
const SPELLED_OTHERWISE = new Set([
  "temperature/nil-unit-is-celsius",
  "voltage/mv",
  "counter/float",
  "kind/unknown", // 1.0 for a kind this client does not know: sent as the int 1
]);

describe("readings.json", () => {
  for (const v of readings) {
    const { name, accept } = meta({ name: v.name, accept: v.accept });
    if (v.reading === null) continue; // NaN, inf, Timestamp ext: no JSON form to encode from
    const isReading = Array.isArray(v.reading) && v.reading.length === 6;

    test(`encode ${name} byte-exact (explicit number forms)`, () => {
      const t = typed(v.reading);
      const bytes = isReading
        ? encodeReading({ sensor: t[0], kind: t[1], ts: t[2], value: t[3], unit: t[4], tags: t[5] })
        : encode(t);
      assert.equal(hex(bytes), v.hex);
    });

    const p = plain(v.reading);
    if (!isReading || !(typeof p[2] === "bigint" || Number.isInteger(p[2]))) continue;
    test(`encode ${name} from plain numbers (accept=${accept})`, () => {
      const r = { sensor: p[0], kind: p[1], ts: BigInt(p[2]), value: p[3], unit: p[4], tags: p[5] };
      const bytes = encodeReading(r);
      if (!SPELLED_OTHERWISE.has(name)) {
        assert.equal(hex(bytes), v.hex);
        return;
      }
      assert.notEqual(hex(bytes), v.hex);
      const f = decodeBody(encodeBatchFrame(1, [bytes]).subarray(4)).readings[0];
      assert.equal(f[3], p[3]);
    });
  }
});
