"""The MQTT peer of `bench.peer_mqtt`: paho publishers and one validating SQLite subscriber.

Each function here is the body of one process (spawned by `bench.peer_mqtt`), talking to a
Mosquitto broker on the loopback:

- `publisher`: one paho client (MQTT 5, QoS 1) publishing the readings of its share of the
  devices, one message per batch, to `<prefix>/<publisher>/<device>`. A message is the msgpack
  array `[sent_ns, readings]`: `sent_ns` is `time.monotonic_ns()` (one clock for every process
  of the machine), `readings` exactly what `bench.load` sends in a BATCH.
- `subscriber`: one paho client (MQTT 5, QoS 1, a persistent session, manual acks) that
  validates every message's readings with the collector's own `Ingest.prepare`, writes them to
  a plain `(series_id, ts)` table (WAL, synchronous=FULL, INSERT OR IGNORE, as the QoS-1
  redeliveries require) and acknowledges each message only after the transaction holding it
  has committed.

MQTT has no end-to-end flow control: a publisher's PUBACK comes from the broker, and Mosquitto
drops QoS-1 messages for a subscriber once more than its in-flight window (the subscriber's
Receive Maximum) plus `max_queued_messages` (1,000 by default) wait. So each publisher keeps
at most `connections x pipeline` of its messages between publish and commit, reading the
subscriber's committed count from shared memory, the same bound as the collector's clients
(`pipeline` unacknowledged batches per connection); the subscriber's Receive Maximum is that
total, so the broker never has to queue beyond it.

Nothing here is used by the product.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import time
from typing import Any, Final

import msgpack
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.load import now_readings
from collector.ingest.prepare import Ingest

CONNECT_TIMEOUT_S: Final = 20.0
DRAIN_TIMEOUT_S: Final = 60.0  # after the stop: every message PUBACKed and committed
SESSION_EXPIRY_S: Final = 300  # the persistent session outlives a crash of the bench by this
MAX_RECEIVE_MAXIMUM: Final = 65_535  # MQTT 5's two-byte Receive Maximum

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL, sensor TEXT NOT NULL, field TEXT NOT NULL, kind TEXT NOT NULL,
    unit TEXT NOT NULL, tags TEXT NOT NULL,
    UNIQUE (device, sensor, field, kind, unit, tags)
);
CREATE TABLE IF NOT EXISTS readings (
    series_id INTEGER NOT NULL, ts INTEGER NOT NULL, value,
    PRIMARY KEY (series_id, ts)
) WITHOUT ROWID;
"""


def _client(client_id: str, *, manual_ack: bool = False) -> mqtt.Client:
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )


def _loop_until(client: mqtt.Client, done: Any, timeout_s: float, what: str) -> None:
    """Run the client's network loop until `done()` holds; raise after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        rc = client.loop(0.01)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"{what}: {rc!r}")


def publisher(
    idx: int, devices: list[str], args: argparse.Namespace, prefix: str, stored: Any,
    ready: Any, go_q: Any, out: Any,
) -> None:  # fmt: skip
    """Publish batches for `devices` from the start to the stop time, then drain."""
    client = _client(f"{prefix.replace('/', '-')}-pub-{idx}")
    client.max_inflight_messages_set(0)  # no limit in paho: the window below bounds it
    sent_at: dict[int, float] = {}
    puback_ms: list[float] = []

    def on_publish(_c: mqtt.Client, _u: object, mid: int, _rc: object, _p: object) -> None:
        t = sent_at.pop(mid, None)
        if t is not None:
            puback_ms.append((time.perf_counter() - t) * 1000)

    client.on_publish = on_publish
    client.connect(args.host, args.port, keepalive=60)
    _loop_until(client, client.is_connected, CONNECT_TIMEOUT_S, "publisher connect")
    ready.put(idx)
    start, stop = go_q.get(timeout=120)
    while time.time() < start:
        client.loop(min(0.01, max(0.0, start - time.time())))
    cpu0 = time.process_time()
    window = len(devices) * args.pipeline
    interval = args.batch * args.processes / args.rate if args.rate else 0.0
    next_send = time.monotonic() + interval * idx / args.processes
    last_ts = dict.fromkeys(devices, 0)
    sent = k = 0
    while time.time() < stop:
        if sent - stored[idx] >= window:  # the subscriber has not committed enough yet
            client.loop(0.001)
            continue
        if interval:
            now = time.monotonic()
            if now < next_send:
                client.loop(min(next_send - now, 0.01))
                continue
            next_send += interval
        device = devices[k % len(devices)]
        k += 1
        last_ts[device], readings = now_readings(last_ts[device], args.batch)
        payload = msgpack.packb([time.monotonic_ns(), readings])
        info = client.publish(f"{prefix}/{idx}/{device}", payload, qos=1)
        sent_at[info.mid] = time.perf_counter()
        sent += 1
        client.loop(0)  # read the PUBACKs that have arrived
    errors: list[str] = []
    try:
        _loop_until(client, lambda: not sent_at and stored[idx] >= sent, DRAIN_TIMEOUT_S, "drain")
    except (TimeoutError, ConnectionError) as exc:
        errors.append(f"publisher {idx}: {exc}: {len(sent_at)} without PUBACK, "
                      f"{sent - stored[idx]} not committed")  # fmt: skip
    cpu = time.process_time() - cpu0
    client.disconnect()
    out.put({"idx": idx, "messages": sent, "readings": sent * args.batch, "cpu_s": cpu,
             "puback_ms": puback_ms, "errors": errors})  # fmt: skip


class _Store:
    """The subscriber's SQLite side: series ids, one open transaction, group commits."""

    def __init__(self, db: str) -> None:
        self.conn = sqlite3.connect(db, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(SCHEMA)
        self.series: dict[tuple[str, ...], int] = {}
        self.rows: list[tuple[int, int, object]] = []
        self.in_txn = False
        self.transactions = 0
        self.rows_written = 0

    def add(self, device: str, keys: list[Any], tss: list[int], values: list[Any]) -> None:
        if not self.in_txn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.in_txn = True
        series, rows = self.series, self.rows
        for key, ts, value in zip(keys, tss, values, strict=True):
            skey = (device, *key)
            sid = series.get(skey)
            if sid is None:
                cur = self.conn.execute(
                    "INSERT INTO series (device, sensor, field, kind, unit, tags) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    skey,
                )
                sid = series[skey] = int(cur.lastrowid or 0)
            rows.append((sid, ts, value))

    def commit(self) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO readings (series_id, ts, value) VALUES (?, ?, ?)", self.rows
        )
        self.conn.execute("COMMIT")
        self.in_txn = False
        self.transactions += 1
        self.rows_written += len(self.rows)
        self.rows.clear()


def subscriber(
    args: argparse.Namespace, prefix: str, db: str, stored: Any, ready: Any, stop: Any,
    out: Any,
) -> None:  # fmt: skip
    """Validate, store and acknowledge every message under `prefix` until told to stop."""
    ingest = Ingest.from_kinds()
    store = _Store(db)
    client = _client(f"{prefix.replace('/', '-')}-sub", manual_ack=True)
    pending: list[tuple[int, int, int]] = []  # (mid, publisher, sent_ns) in the open txn
    latency_ms: list[float] = []
    counts = {"messages": 0, "rejected": 0, "readings": 0}
    subscribed: list[bool] = []

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        received_ns = time.time_ns()
        _, pub, device = msg.topic.rsplit("/", 2)
        sent_ns, readings = msgpack.unpackb(msg.payload, raw=False)
        batch = ingest.prepare(counts["messages"], readings, received_ns)
        store.add(device, batch.keys, batch.ts, batch.values)
        counts["messages"] += 1
        counts["readings"] += batch.valid_count
        counts["rejected"] += len(batch.rejects)
        pending.append((msg.mid, int(pub), sent_ns))

    def on_subscribe(*_a: object) -> None:
        subscribed.append(True)

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    props.ReceiveMaximum = min(MAX_RECEIVE_MAXIMUM, max(20, args.connections * args.pipeline))
    client.connect(args.host, args.port, keepalive=60, clean_start=False, properties=props)
    _loop_until(client, client.is_connected, CONNECT_TIMEOUT_S, "subscriber connect")
    client.subscribe(f"{prefix}/+/+", qos=1)
    _loop_until(client, lambda: subscribed, CONNECT_TIMEOUT_S, "subscribe")
    ready.put("subscriber")
    errors: list[str] = []
    last_commit = 0.0
    while True:
        before = counts["messages"]
        rc = client.loop(0.0 if pending else 0.05)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            errors.append(f"subscriber loop: {rc!r}")
            break
        # Group commit: whatever has arrived once the socket has nothing more to read right
        # now, or --commit-rows rows, whichever comes first; ack after the commit.
        if pending and (len(store.rows) >= args.commit_rows or counts["messages"] == before):
            store.commit()
            done_ns = time.monotonic_ns()
            last_commit = time.time()
            for mid, pub, sent_ns in pending:
                client.ack(mid, 1)
                latency_ms.append((done_ns - sent_ns) / 1e6)
                stored[pub] += 1
            pending.clear()
        elif not pending and stop.is_set():
            break
    # Leave no session behind on the shared broker: expire it at this disconnect.
    bye = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]  # paho
    bye.SessionExpiryInterval = 0
    with contextlib.suppress(OSError):
        client.disconnect(properties=bye)
    store.conn.close()
    out.put({**counts, "transactions": store.transactions, "rows_written": store.rows_written,
             "latency_ms": latency_ms, "last_commit": last_commit, "errors": errors})  # fmt: skip
