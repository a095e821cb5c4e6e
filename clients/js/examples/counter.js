#!/usr/bin/env node
// Sends TELEMETRY_COUNT readings of sensor example/counter (kind counter, values 1..N, one per
// millisecond of device time starting now), waits until every one is acknowledged and prints
// one summary line. Exit 0 on success; 1 with one line on stderr when the collector refuses
// the device or the readings are not acknowledged within TELEMETRY_TIMEOUT_S; 2 for bad
// settings.
//
//   TELEMETRY_ADDRESS  host:port of the collector's ingest listener (required)
//   TELEMETRY_DEVICE   device id, as registered with `telemetry devices add` (required)
//   TELEMETRY_TOKEN    the device's token (required)
//   TELEMETRY_COUNT    readings to send (default 1000)
//   TELEMETRY_CA       PEM file of the CA to trust; turns TLS on
//   TELEMETRY_TLS      1: TLS with the system's CAs
//   TELEMETRY_TIMEOUT_S  give up after this many seconds (default 60)

import { readFileSync } from "node:fs";
import { TelemetryClient, nsFromMs } from "../src/index.js";

function die(code, message) {
  process.stderr.write(`counter: ${message}\n`);
  process.exit(code);
}

const env = process.env;
for (const name of ["TELEMETRY_ADDRESS", "TELEMETRY_DEVICE", "TELEMETRY_TOKEN"]) {
  if (!env[name]) die(2, `${name} is not set`);
}
const count = Number(env.TELEMETRY_COUNT ?? "1000");
if (!Number.isSafeInteger(count) || count < 0) die(2, `TELEMETRY_COUNT must be a whole number, got ${env.TELEMETRY_COUNT}`);
const timeoutS = Number(env.TELEMETRY_TIMEOUT_S ?? "60");

let tls = false;
if (env.TELEMETRY_CA) {
  try {
    tls = { ca: readFileSync(env.TELEMETRY_CA) };
  } catch (err) {
    die(2, `TELEMETRY_CA: ${err.message}`);
  }
} else if (env.TELEMETRY_TLS === "1") {
  tls = true;
}

let client;
try {
  client = new TelemetryClient({
    address: env.TELEMETRY_ADDRESS,
    deviceId: env.TELEMETRY_DEVICE,
    token: env.TELEMETRY_TOKEN,
    tls,
    maxQueueReadings: Math.max(100000, count),
  });
} catch (err) {
  die(2, err.message);
}
client.on("error", () => {}); // fatal errors also reject the promises awaited below
let lastError = null;
client.on("disconnect", (err) => {
  lastError = err;
});

const start = Date.now();
const readings = Array.from({ length: count }, (_, i) => ({
  sensor: "example/counter",
  kind: "counter",
  ts: nsFromMs(start + i),
  value: i + 1,
}));

const timer = setTimeout(() => {
  const why = lastError ? ` (last connection error: ${lastError.message})` : "";
  die(1, `timed out after ${timeoutS} s: ${client.pending} of ${count} readings not acknowledged${why}`);
}, timeoutS * 1000);

try {
  const result = await client.send(readings);
  await client.close();
  clearTimeout(timer);
  const { accepted, duplicate, rejected, dropped } = client.stats;
  const more = dropped ? `, ${dropped} dropped` : "";
  process.stdout.write(
    `sent ${result.count} reading${result.count === 1 ? "" : "s"}: ${accepted} accepted, ${duplicate} duplicate, ${rejected} rejected${more}\n`,
  );
  for (const r of result.rejects.slice(0, 5)) {
    process.stderr.write(`counter: reading ${r.index} rejected: ${r.code} at ${r.path || "(reading)"}: ${r.message}\n`);
  }
  process.exit(0);
} catch (err) {
  die(1, err.message);
}
