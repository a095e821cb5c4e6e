// A scriptable collector for the client's unit tests: real TCP on 127.0.0.1 port 0, the
// collector side of wire.js's Connection, and a per-test handler deciding each answer.

import net from "node:net";
import { once } from "node:events";
import { CLOSED, Connection, NEED_DATA, ProtocolError } from "../src/wire.js";

export class FakeCollector {
  /**
   * handler(session, msg) answers one message; the default answers HELLO with WELCOME
   * (lastSeq = this.lastSeq) and every BATCH with an ACK accepting all its readings.
   */
  constructor(handler = null, { heartbeatMs = 15000, minor = 1 } = {}) {
    this.handler = handler ?? ((s, m) => this.answer(s, m));
    this.heartbeatMs = heartbeatMs;
    this.minor = minor;
    this.lastSeq = 0;
    this.sessions = [];
    this.batches = []; // every BATCH received: {session, seq, readings}
    this.hellos = [];
    this.waiters = [];
    this.server = net.createServer((socket) => this._accept(socket));
  }

  async start() {
    this.server.listen(0, "127.0.0.1");
    await once(this.server, "listening");
    this.port = this.server.address().port;
    this.address = `127.0.0.1:${this.port}`;
    return this;
  }

  async stop() {
    for (const s of this.sessions) s.socket.destroy();
    this.server.close();
    await once(this.server, "close");
  }

  /** The default answers. */
  answer(s, msg) {
    if (msg.type === "HELLO") s.send(this.welcome());
    else if (msg.type === "BATCH") this.ack(s, msg);
    else if (msg.type === "PING") s.send({ type: "PONG", nonce: msg.nonce });
  }

  welcome() {
    return { type: "WELCOME", version: 1, lastSeq: this.lastSeq, heartbeatMs: this.heartbeatMs, minor: this.minor };
  }

  ack(s, msg, rejects = []) {
    this.lastSeq = Math.max(this.lastSeq, msg.seq);
    s.send({ type: "ACK", seq: msg.seq, accepted: msg.readings.length - rejects.length, duplicate: 0, rejects });
  }

  /** Resolves when pred() holds, checked after every message received. */
  until(pred, what, timeoutMs = 5000) {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
      this.waiters.push({
        pred,
        done: () => {
          clearTimeout(timer);
          resolve();
        },
      });
    });
  }

  _wake() {
    this.waiters = this.waiters.filter((w) => (w.pred() ? (w.done(), false) : true));
  }

  _accept(socket) {
    const conn = new Connection("collector");
    const s = {
      socket,
      conn,
      received: [],
      raw: [], // every chunk received, for byte-level checks
      send: (msg) => socket.destroyed || socket.write(conn.send(msg)),
      close: () => socket.destroy(),
    };
    this.sessions.push(s);
    socket.on("data", (chunk) => {
      s.raw.push(chunk);
      conn.receiveData(chunk);
      for (;;) {
        let msg;
        try {
          msg = conn.nextEvent();
        } catch (err) {
          if (err instanceof ProtocolError) {
            s.send({ type: "ERROR", code: err.code, message: err.detail, fatal: err.fatal });
            if (err.fatal) socket.destroy();
            continue;
          }
          throw err;
        }
        if (msg === NEED_DATA || msg === CLOSED) break;
        s.received.push(msg);
        if (msg.type === "HELLO") this.hellos.push(msg);
        if (msg.type === "BATCH") this.batches.push({ session: s, seq: msg.seq, readings: msg.readings });
        this.handler(s, msg);
        this._wake();
      }
    });
    socket.on("error", () => {});
    socket.on("close", () => this._wake());
    this._wake();
  }
}
