// Server-Sent Events over fetch(): EventSource cannot send an Authorization header.
//
// Parses the text/event-stream format (id, event, data; comments ignored), reconnects by
// itself with jittered exponential backoff, and sends `Last-Event-ID` so the collector
// resumes after the last event received. A stream silent for longer than SILENT_MS (the
// collector sends a keepalive every 15 s) is treated as dead and reopened.

import { apiUrl, authHeaders } from "./api.js";

const SILENT_MS = 40_000;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 10_000;

export class EventStream {
  // onEvent(type, data, id); onState("live" | "reconnecting" | "refused")
  constructor(path, params, { onEvent, onState = () => {}, lastEventId = null }) {
    this.url = apiUrl(path, params);
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastEventId = lastEventId;
    this.closed = false;
    this.controller = null;
    this.connects = 0;
    this.run();
  }

  close() {
    this.closed = true;
    if (this.controller) this.controller.abort();
  }

  async run() {
    let delay = BACKOFF_FIRST_MS;
    while (!this.closed) {
      let outcome = "failed";
      try {
        outcome = await this.once();
      } catch (err) {
        if (this.closed) return;
        if (err && err.name !== "AbortError") console.debug("event stream:", err.message);
      }
      if (this.closed) return;
      if (outcome === "ended") delay = BACKOFF_FIRST_MS;
      // A refused token stays refused until the page gets a new one: say so, retry slowly.
      if (outcome === "refused") delay = BACKOFF_MAX_MS;
      else this.onState("reconnecting");
      await new Promise((ok) => setTimeout(ok, delay * (0.5 + Math.random())));
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
    }
  }

  // One connection: "ended" once it was established and closed, or "refused" (401).
  async once() {
    const controller = (this.controller = new AbortController());
    const headers = { ...authHeaders(), Accept: "text/event-stream" };
    if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;
    const resp = await fetch(this.url, { headers, cache: "no-store", signal: controller.signal });
    if (resp.status === 401) {
      this.onState("refused");
      return "refused";
    }
    if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
    this.connects += 1;
    this.onState("live");
    let watchdog = setTimeout(() => controller.abort(), SILENT_MS);
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        clearTimeout(watchdog);
        watchdog = setTimeout(() => controller.abort(), SILENT_MS);
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          this.dispatch(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } finally {
      clearTimeout(watchdog);
      reader.releaseLock();
    }
    return "ended";
  }

  dispatch(block) {
    let type = "message";
    const data = [];
    let id = null;
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
    }
    if (id !== null) this.lastEventId = id;
    if (data.length === 0) return;
    let parsed;
    try {
      parsed = JSON.parse(data.join("\n"));
    } catch {
      return; // not ours
    }
    this.onEvent(type, parsed, id);
  }
}
