#!/usr/bin/env node
// Scenarios against a real collector, driven by tests/clients/test_client_js.py. Settings
// come from TELEMETRY_ADDRESS, TELEMETRY_DEVICE and TELEMETRY_TOKEN; each scenario prints
// JSON lines on stdout (bigints as strings) for the Python side to check against the store.
//
//   node e2e/driver.js mixed          valid and invalid readings in one send()
//   node e2e/driver.js resend N       N readings; an in-process proxy swallows the first ACK
//                                     and cuts the link, so the batch is sent again
//   node e2e/driver.js stream N       N/2 readings, then a line on stdin, then the rest

import { once } from "node:events";
import net from "node:net";
import { createInterface } from "node:readline";

import { TelemetryClient, encodeReading, nsFromMs } from "../src/index.js";

const TS0 = nsFromMs(Date.UTC(2024, 0, 1));
const MS = 1000000n;

function out(obj) {
  process.stdout.write(`${JSON.stringify(obj, (_, v) => (typeof v === "bigint" ? v.toString() : v))}\n`);
}

function newClient(address = process.env.TELEMETRY_ADDRESS, options = {}) {
  const client = new TelemetryClient({
    address,
    deviceId: process.env.TELEMETRY_DEVICE,
    token: process.env.TELEMETRY_TOKEN,
    backoffInitialMs: 20,
    backoffMaxMs: 200,
    ...options,
  });
  client.on("error", () => {});
  return client;
}

function counters(sensor, from, to) {
  const list = [];
  for (let v = from; v <= to; v++) list.push({ sensor, kind: "counter", ts: TS0 + BigInt(v) * MS, value: v });
  return list;
}

// Valid readings first (indexes 0-6), then one invalid reading per reject code.
const MIXED = [
  { sensor: "e2e/air-temp", kind: "temperature", ts: TS0, value: 21.5, unit: "C", tags: { bench: "north" } },
  { sensor: "e2e/humidity", kind: "humidity", ts: TS0, value: 55, unit: "%" },
  { sensor: "e2e/packets", kind: "counter", ts: TS0, value: 42 },
  { sensor: "e2e/gps", kind: "gps", ts: TS0, value: { lat: 48.137154, lon: 11 } },
  { sensor: "e2e/door", kind: "state", ts: TS0, value: true },
  { sensor: "e2e/log", kind: "event", ts: TS0, value: "door opened" },
  { sensor: "e2e/fan", kind: "gauge", ts: TS0, value: -12.5, unit: "rpm" },
  { sensor: "e2e/humidity", kind: "humidity", ts: TS0 + 1n, value: 104, unit: "%" },
  { sensor: "e2e/nose", kind: "smell", ts: TS0, value: 1 },
  { sensor: "e2e/packets", kind: "counter", ts: TS0 + 1n, value: -1 },
  { sensor: "e2e/packets", kind: "counter", ts: TS0 + 2n, value: 2.5 },
  { sensor: "e2e/gps", kind: "gps", ts: TS0 + 1n, value: { lat: 1 } },
  { sensor: "my sensor", kind: "gauge", ts: TS0, value: 1 },
  { sensor: "e2e/air-temp", kind: "temperature", ts: TS0 + 1n, value: 20, unit: "degC" },
  { sensor: "e2e/fan", kind: "gauge", ts: TS0 + 1n, value: 1, tags: { k: 1 } },
  { sensor: "e2e/log", kind: "text", ts: TS0 + 1n, value: "x".repeat(1025) },
  { sensor: "e2e/fan", kind: "gauge", ts: -1n, value: 1 },
  { sensor: "e2e/door", kind: "state", ts: TS0 + 1n, value: 1 },
];

async function mixed() {
  const client = newClient();
  const result = await client.send(MIXED);
  await client.close();
  out({ hex: MIXED.map((r) => Buffer.from(encodeReading(r)).toString("hex")), result, stats: client.stats });
}

// A proxy that forwards both ways but swallows the first ACK from the collector and then
// closes both sides: the batch is committed, its ACK is lost.
async function ackEatingProxy(upstream) {
  const [host, port] = [upstream.slice(0, upstream.lastIndexOf(":")), Number(upstream.slice(upstream.lastIndexOf(":") + 1))];
  const state = { connections: 0, acksSwallowed: 0 };
  const server = net.createServer((down) => {
    state.connections += 1;
    const up = net.connect({ host, port });
    let buf = Buffer.alloc(0);
    down.on("data", (d) => up.write(d));
    up.on("data", (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        const n = 4 + buf.readUInt32BE(0);
        const frame = buf.subarray(0, n);
        buf = buf.subarray(n);
        if (state.acksSwallowed === 0 && frame[5] === 0x04) {
          state.acksSwallowed += 1;
          down.destroy();
          up.destroy();
          return;
        }
        down.write(frame);
      }
    });
    for (const s of [up, down]) {
      s.on("error", () => {});
      s.on("close", () => (s === up ? down : up).destroy());
    }
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return { server, state, address: `127.0.0.1:${server.address().port}` };
}

async function resend(n) {
  const proxy = await ackEatingProxy(process.env.TELEMETRY_ADDRESS);
  const client = newClient(proxy.address, { maxBatchReadings: n });
  const result = await client.send(counters("e2e/resend", 1, n));
  await client.close();
  proxy.server.close();
  out({ result, stats: client.stats, proxy: proxy.state });
}

async function stream(n) {
  const half = Math.floor(n / 2);
  const client = newClient(process.env.TELEMETRY_ADDRESS, { maxBatchReadings: 100 });
  const first = await client.send(counters("e2e/stream", 1, half));
  out({ phase: "half", result: first, stats: client.stats });
  const lines = createInterface({ input: process.stdin });
  for await (const _ of lines) break; // the test has broken the link or the collector
  const second = await client.send(counters("e2e/stream", half + 1, n));
  await client.close();
  out({ phase: "done", result: second, stats: client.stats });
}

const [scenario, arg] = process.argv.slice(2);
const scenarios = { mixed, resend, stream };
if (!scenarios[scenario]) {
  process.stderr.write(`driver: unknown scenario ${scenario}\n`);
  process.exit(2);
}
try {
  await scenarios[scenario](Number(arg ?? 0));
  process.exit(0);
} catch (err) {
  process.stderr.write(`driver: ${err.stack ?? err}\n`);
  process.exit(1);
}
