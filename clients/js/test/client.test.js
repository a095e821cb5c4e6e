// TelemetryClient against a scriptable collector over real TCP on 127.0.0.1: batching, ACK
// rejects, RETRY, ERROR naming the in-flight seq, reconnect and resend, heartbeats, the
// bounded queue and fatal auth_failed. Every wait has a deadline; no sleeps.

import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { TelemetryClient, TelemetryError, float64, parseAddress } from "../src/index.js";
import { FakeCollector } from "./fakecollector.js";

const TS0 = 1700000000000000000n;
let fake;
let client;

afterEach(async () => {
  await client?.close({ flush: false }).catch(() => {});
  await fake?.stop();
  client = fake = undefined;
});

function counters(n, from = 1) {
  return Array.from({ length: n }, (_, i) => ({
    sensor: "t/counter",
    kind: "counter",
    ts: TS0 + BigInt(from + i) * 1000000n,
    value: from + i,
  }));
}

function newClient(options = {}) {
  client = new TelemetryClient({
    address: fake.address,
    deviceId: "dev-1",
    token: "tok",
    backoffInitialMs: 10,
    backoffMaxMs: 50,
    ...options,
  });
  return client;
}

test("HELLO names the device, the client and a fresh 128-bit stream id", async () => {
  fake = await new FakeCollector().start();
  const welcome = await newClient().connect();
  assert.equal(welcome.minor, 1);
  const [hello] = fake.hellos;
  assert.equal(hello.deviceId, "dev-1");
  assert.equal(hello.token, "tok");
  assert.equal(hello.agent, "telemetry-js");
  assert.match(hello.stream, /^[0-9a-f]{32}$/);
  assert.equal(hello.stream, client.stream);
  const other = new TelemetryClient({ address: fake.address, deviceId: "d", token: "t" });
  assert.notEqual(other.stream, client.stream);
  assert.throws(() => new TelemetryClient({ address: fake.address, deviceId: "d", token: "t", stream: "a b" }), TypeError);
  assert.equal(new TelemetryClient({ address: fake.address, deviceId: "d", token: "t", stream: "" }).stream, "");
});

test("readings go in batches and each send() learns its own rejects", async () => {
  fake = await new FakeCollector((s, m) => {
    if (m.type !== "BATCH") return fake.answer(s, m);
    const rejects = m.readings
      .map((r, i) => [i, r])
      .filter(([, r]) => r[1] === "humidity" && r[3] > 100)
      .map(([i]) => [i, "out_of_range", "value", "Input should be less than or equal to 100"]);
    fake.ack(s, m, rejects);
  }).start();
  newClient({ maxBatchReadings: 3 });
  const ok = client.send(counters(4));
  const mixed = client.send([
    { sensor: "t/h", kind: "humidity", ts: TS0, value: 55 },
    { sensor: "t/h", kind: "humidity", ts: TS0 + 1n, value: 104 },
  ]);
  const r1 = await ok;
  const r2 = await mixed;
  assert.deepEqual(r1, { count: 4, acked: 4, rejects: [], dropped: 0 });
  assert.equal(r2.acked, 1);
  assert.deepEqual(r2.rejects, [
    { index: 1, code: "out_of_range", path: "value", message: "Input should be less than or equal to 100" },
  ]);
  assert.deepEqual(
    fake.batches.map((b) => [b.seq, b.readings.length]),
    [
      [1, 3],
      [2, 3],
    ],
  );
  assert.equal(client.stats.accepted, 5);
  assert.equal(client.stats.rejected, 1);
  // humidity 104 is a number kind: sent as float64 104.0, never as the int 104
  const bytes = Buffer.concat(fake.sessions[0].raw).toString("hex");
  assert.ok(bytes.includes("a868756d6964697479cf17979cfe362a0001cb405a000000000000c0c0"), bytes);
});

test("explicit float64() and int forms reach the wire as written", async () => {
  fake = await new FakeCollector().start();
  newClient();
  await client.send([
    { sensor: "x", kind: "my_float_kind", ts: TS0, value: float64(3) },
    { sensor: "x", kind: "counter", ts: TS0, value: 3 },
    { sensor: "x", kind: "gauge", ts: new Date(1700000000000), value: 3 },
  ]);
  const bytes = Buffer.concat(fake.sessions[0].raw).toString("hex");
  assert.ok(bytes.includes("ad6d795f666c6f61745f6b696e64cf17979cfe362a0000cb4008000000000000"));
  assert.ok(bytes.includes("a7636f756e746572cf17979cfe362a000003c0c0"));
  assert.ok(bytes.includes("a56761756765cf17979cfe362a0000cb4008000000000000"));
  assert.throws(() => client.send({ sensor: "x", kind: "gauge", ts: 1700000000000, value: 1 }), TypeError);
});

test("RETRY: the same batch, same seq, is sent again after retry_after_ms", async () => {
  let retried = false;
  fake = await new FakeCollector((s, m) => {
    if (m.type === "BATCH" && !retried) {
      retried = true;
      return s.send({ type: "RETRY", seq: m.seq, reason: "overloaded", retryAfterMs: 30 });
    }
    return fake.answer(s, m);
  }).start();
  newClient();
  const res = await client.send(counters(5));
  assert.equal(res.acked, 5);
  assert.deepEqual(
    fake.batches.map((b) => b.seq),
    [1, 1],
  );
  assert.deepEqual(fake.batches[0].readings, fake.batches[1].readings);
  assert.equal(client.stats.retries, 1);
  assert.equal(client.stats.batches, 2);
});

test("non-fatal ERROR naming the in-flight seq drops that batch, counts it, and goes on", async () => {
  fake = await new FakeCollector((s, m) => {
    if (m.type === "BATCH" && m.seq === 1) {
      return s.send({ type: "ERROR", code: "bad_message", message: "undecodable readings", fatal: false, seq: 1 });
    }
    return fake.answer(s, m);
  }).start();
  newClient({ maxBatchReadings: 2 });
  const dropped = [];
  client.on("dropped", (d) => dropped.push(d));
  const res = await client.send(counters(4));
  assert.deepEqual(res, { count: 4, acked: 2, rejects: [], dropped: 2 });
  assert.deepEqual(dropped, [{ seq: 1, count: 2, code: "bad_message", message: "undecodable readings" }]);
  assert.equal(client.stats.dropped, 2);
  // the drop is reported in the next HELLO
  fake.sessions[0].close();
  await fake.until(() => fake.hellos.length === 2, "a second HELLO");
  assert.equal(fake.hellos[1].dropped, 2);
  assert.equal(fake.hellos[0].dropped, 0);
});

test("v1.0 collector: a non-fatal ERROR without seq while a batch flies drops it", async () => {
  fake = await new FakeCollector(
    (s, m) => {
      if (m.type === "BATCH" && m.seq === 1) {
        return s.send({ type: "ERROR", code: "bad_message", message: "BATCH.readings must be an array", fatal: false });
      }
      return fake.answer(s, m);
    },
    { minor: 0 },
  ).start();
  newClient({ maxBatchReadings: 1 });
  const res = await client.send(counters(2));
  assert.equal(res.dropped, 1);
  assert.equal(res.acked, 1);
});

test("connection lost with a batch in flight: reconnect, resume after last_seq, resend", async () => {
  let cut = false;
  fake = await new FakeCollector((s, m) => {
    if (m.type === "BATCH" && m.seq === 2 && !cut) {
      cut = true;
      return s.close(); // lost before the ACK
    }
    return fake.answer(s, m);
  }).start();
  newClient({ maxBatchReadings: 10 });
  const disconnects = [];
  client.on("disconnect", (e) => disconnects.push(e));
  const a = await client.send(counters(10));
  const b = await client.send(counters(10, 11));
  assert.equal(a.acked + b.acked, 20);
  assert.deepEqual(
    fake.batches.map((x) => x.seq),
    [1, 2, 2],
  );
  assert.deepEqual(fake.batches[1].readings, fake.batches[2].readings);
  assert.equal(fake.hellos.length, 2);
  assert.equal(fake.hellos[0].stream, fake.hellos[1].stream);
  assert.equal(disconnects.length, 1);
  assert.equal(client.stats.reconnects, 1);
});

test("a collector that takes smaller batches gets the waiting batch split", async () => {
  let cut = false;
  fake = await new FakeCollector((s, m) => {
    if (m.type === "HELLO" && fake.hellos.length === 2) {
      return s.send({ ...fake.welcome(), maxBatchReadings: 2 });
    }
    if (m.type === "BATCH" && !cut) {
      cut = true;
      return s.close();
    }
    return fake.answer(s, m);
  }).start();
  newClient();
  const res = await client.send(counters(5));
  assert.equal(res.acked, 5);
  assert.deepEqual(
    fake.batches.map((b) => [b.seq, b.readings.map((r) => r[3])]),
    [
      [1, [1, 2, 3, 4, 5]],
      [2, [1, 2]],
      [3, [3, 4]],
      [4, [5]],
    ],
  );
});

test("new batches continue after WELCOME.last_seq", async () => {
  fake = await new FakeCollector().start();
  fake.lastSeq = 41;
  newClient();
  await client.send(counters(1));
  assert.equal(fake.batches[0].seq, 42);
});

test("readings sent while the collector is away wait, then go once it is back", async () => {
  fake = await new FakeCollector().start();
  const { port } = fake;
  await fake.stop();
  newClient();
  const pending = client.send(counters(3));
  await new Promise((resolve) => client.once("disconnect", resolve));
  fake = new FakeCollector();
  fake.server.listen(port, "127.0.0.1");
  fake.port = port;
  const res = await pending;
  assert.equal(res.acked, 3);
  assert.ok(client.stats.reconnects >= 1);
});

test("fatal session_replaced naming the in-flight seq: reconnect and resend", async () => {
  let fenced = false;
  fake = await new FakeCollector((s, m) => {
    if (m.type === "BATCH" && !fenced) {
      fenced = true;
      s.send({ type: "ERROR", code: "session_replaced", message: "newer session", fatal: true, seq: m.seq });
      return s.close();
    }
    return fake.answer(s, m);
  }).start();
  newClient();
  const res = await client.send(counters(3));
  assert.equal(res.acked, 3);
  assert.deepEqual(
    fake.batches.map((b) => b.seq),
    [1, 1],
  );
});

test("auth_failed is fatal: pending sends and connect() reject, 'error' is emitted", async () => {
  fake = await new FakeCollector((s, m) => {
    if (m.type === "HELLO") {
      s.send({ type: "ERROR", code: "auth_failed", message: "unknown device or bad token", fatal: true });
      s.close();
    }
  }).start();
  newClient();
  const errors = [];
  client.on("error", (e) => errors.push(e));
  const sent = client.send(counters(2));
  await assert.rejects(sent, (e) => e instanceof TelemetryError && e.code === "auth_failed");
  await assert.rejects(client.connect(), (e) => e.code === "auth_failed");
  await assert.rejects(client.flush(), (e) => e.code === "auth_failed");
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "auth_failed");
  assert.equal(fake.hellos.length, 1); // no reconnect after a fatal answer
  await assert.rejects(client.send(counters(1)), (e) => e.code === "auth_failed");
});

test("heartbeats: PING after a quiet period, PONG echoes the collector's nonce", async () => {
  fake = await new FakeCollector(null, { heartbeatMs: 100 }).start();
  await newClient().connect();
  fake.sessions[0].send({ type: "PING", nonce: 777 });
  await fake.until(
    () => fake.sessions[0].received.some((m) => m.type === "PONG" && m.nonce === 777),
    "the PONG for nonce 777",
  );
  await fake.until(() => fake.sessions[0].received.some((m) => m.type === "PING"), "a PING from the client");
});

test("a silent link is dead after 2 heartbeat periods + 1 s: the client reconnects", async () => {
  fake = await new FakeCollector(
    (s, m) => {
      // the first connection gets its WELCOME, then never another byte
      if (fake.sessions.length > 1 || m.type === "HELLO") fake.answer(s, m);
    },
    { heartbeatMs: 100 },
  ).start();
  newClient();
  const t0 = Date.now();
  await client.connect();
  await fake.until(() => fake.hellos.length === 2, "a reconnect", 4000);
  const took = Date.now() - t0;
  assert.ok(took >= 1100 && took < 3000, `reconnected after ${took} ms`);
});

test("the queue is bounded: the oldest readings are dropped and counted", async () => {
  fake = await new FakeCollector().start();
  const { port } = fake;
  await fake.stop();
  newClient({ maxQueueReadings: 5 });
  const first = client.send(counters(4));
  const second = client.send(counters(4, 5));
  assert.equal(client.pending, 5);
  assert.equal(client.stats.dropped, 3);
  fake = new FakeCollector();
  fake.server.listen(port, "127.0.0.1");
  fake.port = port;
  const r1 = await first; // its 3 oldest readings made room
  assert.deepEqual(r1, { count: 4, acked: 1, rejects: [], dropped: 3 });
  const r2 = await second;
  assert.equal(r2.acked, 4);
  assert.equal(client.stats.dropped, 3);
  assert.deepEqual(
    fake.batches.flatMap((b) => b.readings.map((r) => r[3])),
    [4, 5, 6, 7, 8],
  );
  assert.equal(fake.hellos[0].dropped, 3);
});

test("close() flushes, says BYE, and later sends are refused", async () => {
  fake = await new FakeCollector().start();
  newClient();
  const res = client.send(counters(3));
  await client.close();
  assert.equal((await res).acked, 3);
  await fake.until(() => fake.sessions[0].received.some((m) => m.type === "BYE"), "BYE");
  await assert.rejects(client.send(counters(1)), (e) => e.code === "closed");
});

test("addresses parse as host:port and [v6]:port", () => {
  assert.deepEqual(parseAddress("127.0.0.1:7000"), { host: "127.0.0.1", port: 7000 });
  assert.deepEqual(parseAddress("[::1]:7000"), { host: "::1", port: 7000 });
  assert.throws(() => parseAddress("nohost"), TypeError);
});
