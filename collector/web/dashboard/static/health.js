// The collector's health panel: ingest rate, commit latency, writer queue, connections,
// rejects and the storage gauges, from /api/v1/metrics (the same numbers as /metrics).
// Rates and latencies are over the interval between two polls.

import { getJSON } from "./api.js";
import { el, formatBytes, formatNumber, formatRate, formatSeconds } from "./format.js";

const POLL_MS = 2_000;

const CARDS = [
  ["ingest", "Ingest", "readings/s accepted"],
  ["commit", "Commit latency", "mean over the last interval; p99 bound"],
  ["queue", "Writer queue", "batches waiting"],
  ["connections", "Connections", "agents connected now"],
  ["rejects", "Rejects", "since the collector started"],
  ["head", "Head rows", "readings not compacted yet"],
  ["blocks", "Blocks", "compacted blocks"],
  ["size", "File size", "database + write-ahead log"],
  ["lag", "Compaction lag", "age of the oldest head reading"],
];

// The smallest bucket bound under which `q` of the interval's commits fell.
function quantileBound(prev, cur, q) {
  const total = cur.count - prev.count;
  if (total <= 0) return null;
  let seen = 0;
  for (let i = 0; i < cur.buckets.length; i += 1) {
    seen += cur.buckets[i][1] - prev.buckets[i][1];
    if (seen >= q * total) return cur.buckets[i][0];
  }
  return Infinity;
}

export function healthPanel() {
  const values = {};
  const notes = {};
  const grid = el("div", { class: "cards" });
  for (const [key, label, help] of CARDS) {
    values[key] = el("div", { class: "card-value" }, "–");
    notes[key] = el("div", { class: "card-note" }, help);
    grid.append(el("div", { class: "card", dataset: { metric: key } }, el("div", { class: "card-label" }, label), values[key], notes[key]));
  }
  const error = el("p", { class: "error", hidden: true, role: "alert" });
  const node = el("section", { class: "panel", id: "health" }, el("div", { class: "panel-head" }, el("h2", {}, "Collector")), error, grid);
  const abort = new AbortController();
  let prev = null;

  function show(key, text, note) {
    values[key].textContent = text;
    if (note !== undefined) notes[key].textContent = note;
  }

  async function poll() {
    let m;
    try {
      m = await getJSON("/api/v1/metrics", {}, abort.signal);
    } catch (err) {
      if (err.name === "AbortError") return;
      error.hidden = false;
      error.textContent = `Could not load the collector's metrics: ${err.message}`;
      return;
    }
    error.hidden = true;
    if (prev) {
      const dt = (m.now_ns - prev.now_ns) / 1e9;
      if (dt > 0) show("ingest", formatRate((m.readings.accepted - prev.readings.accepted) / dt));
      const h = m.commit_seconds;
      const p = prev.commit_seconds;
      const n = h.count - p.count;
      if (n > 0) {
        const p99 = quantileBound(p, h, 0.99);
        show("commit", formatSeconds((h.sum - p.sum) / n), `${n} commits; p99 ${p99 === Infinity ? "> 2.5 s" : `≤ ${formatSeconds(p99)}`}`);
      } else {
        show("commit", "idle", "no commit in the last interval");
      }
      const rejectRate = dt > 0 ? (m.readings.rejected - prev.readings.rejected) / dt : 0;
      show("rejects", formatNumber(m.readings.rejected), `${formatRate(rejectRate)}/s now; since the collector started`);
    } else {
      show("ingest", "…");
      show("commit", h0(m.commit_seconds));
      show("rejects", formatNumber(m.readings.rejected));
    }
    show("queue", formatNumber(m.writer_queue_depth));
    show("connections", formatNumber(m.connections.open), `${formatNumber(m.connections.total)} accepted since start`);
    const s = m.storage;
    if (s) {
      show("head", formatNumber(s.head_rows));
      show("blocks", formatNumber(s.blocks), `${formatNumber(s.small_blocks)} not merged into their hour yet`);
      show("size", formatBytes(s.db_bytes + s.wal_bytes), `${formatBytes(s.wal_bytes)} WAL, ${formatBytes(s.free_bytes)} free`);
    }
    show("lag", m.compaction_lag_s === null ? "none" : formatSeconds(m.compaction_lag_s), m.compaction_lag_s === null ? "the head is empty" : "age of the oldest head reading");
    node.dataset.updated = String(m.now_ns);
    prev = m;
  }

  function h0(h) {
    return h.count > 0 ? formatSeconds(h.sum / h.count) : "–";
  }

  poll();
  const timer = setInterval(poll, POLL_MS);
  return {
    node,
    close() {
      abort.abort();
      clearInterval(timer);
    },
  };
}
