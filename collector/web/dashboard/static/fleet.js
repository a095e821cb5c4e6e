// The fleet page: every device with its status, last seen, readings/s, rejects, spool drops
// and a sparkline of its main series (the first numeric series it sends); sortable and
// filterable. Live through one throttled event stream for the whole fleet.

import { getAllPages, getJSON, globExact, serverNowMs, serverNowNsText } from "./api.js";
import { BucketSeries, sparkline } from "./charts.js";
import { el, formatAge, formatNumber, formatRate, seriesName, valueWithUnit } from "./format.js";
import { healthPanel } from "./health.js";
import { EventStream } from "./sse.js";
import { STATUS_ORDER, deviceStatus, loadDevices } from "./status.js";

const SPARK_WINDOW_MS = 15 * 60_000;
const SPARK_EVERY = "10s";
const SPARK_EVERY_MS = 10_000;
const RATE_WINDOW_MS = 10_000;
const DEVICES_POLL_MS = 5_000;
const LATEST_POLL_MS = 30_000;
const TICK_MS = 500;
const PRUNE_MS = 30_000;

const COLUMNS = [
  { key: "name", label: "Device" },
  { key: "status", label: "Status" },
  { key: "lastSeen", label: "Last seen" },
  { key: "rate", label: "Readings/s", numeric: true },
  { key: "rejects", label: "Rejects", numeric: true, title: "rejected readings since the collector started" },
  { key: "drops", label: "Spool drops", numeric: true, title: "readings the agent dropped from its full spool, as it reported" },
  { key: "main", label: "Main series", sortable: false },
];

export function fleetPage(root, ctx) {
  const abort = new AbortController();
  const timers = [];
  const devices = new Map(); // name -> row state
  const series = new Map(); // series id -> BucketSeries (SPARK_EVERY buckets)
  const sort = { key: "name", dir: 1 };
  let filter = "";
  let stream = null;
  let cutNs = null; // readings before this come from /aggregate, from it on from the stream
  let streamStartMs = null;
  const lookup = { pending: false, lastMs: -Infinity };

  const error = el("p", { class: "error", hidden: true, role: "alert" });
  const filterInput = el("input", {
    type: "search",
    id: "fleet-filter",
    placeholder: "Filter by name",
    "aria-label": "Filter devices by name",
    oninput: () => {
      filter = filterInput.value.trim().toLowerCase();
      arrange(true);
    },
  });
  const headRow = el("tr");
  for (const col of COLUMNS) {
    const th = el("th", { scope: "col", title: col.title, class: col.numeric ? "num" : null }, col.label);
    if (col.sortable !== false) {
      th.dataset.sort = col.key;
      th.tabIndex = 0;
      const toggle = () => {
        sort.dir = sort.key === col.key ? -sort.dir : 1;
        sort.key = col.key;
        arrange(true);
      };
      th.addEventListener("click", toggle);
      th.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          toggle();
        }
      });
    }
    headRow.append(th);
  }
  const tbody = el("tbody");
  const empty = el("p", { class: "muted", hidden: true }, "No devices registered yet (telemetry devices add NAME).");
  const health = healthPanel();
  root.append(
    health.node,
    el(
      "section",
      { class: "panel", id: "fleet" },
      el("div", { class: "panel-head" }, el("h2", {}, "Fleet"), filterInput),
      error,
      el("div", { class: "table-wrap" }, el("table", { class: "fleet" }, el("thead", {}, headRow), tbody)),
      empty,
      el("p", { class: "muted small" }, `Live: last reading under ${fmtMs(ctx.staleMs)} ago; stale under ${fmtMs(ctx.offlineMs)}; offline after.`),
    ),
  );

  function fmtMs(ms) {
    return ms % 60_000 === 0 ? `${ms / 60_000} min` : `${ms / 1000} s`;
  }

  function showError(err) {
    if (abort.signal.aborted || (err && err.name === "AbortError")) return;
    error.hidden = !err;
    error.textContent = err ? `Could not load: ${err.message}` : "";
  }

  function bucketsOf(id) {
    let b = series.get(id);
    if (!b) series.set(id, (b = new BucketSeries(SPARK_EVERY_MS)));
    return b;
  }

  function rowFor(name) {
    let d = devices.get(name);
    if (d) return d;
    const cells = {
      name: el("td", { "data-label": "Device" }, el("a", { href: `#/device/${encodeURIComponent(name)}` }, name)),
      status: el("td", { "data-label": "Status" }, el("span", { class: "badge" })),
      lastSeen: el("td", { "data-label": "Last seen" }),
      rate: el("td", { "data-label": "Readings/s", class: "num" }),
      rejects: el("td", { "data-label": "Rejects", class: "num" }),
      drops: el("td", { "data-label": "Spool drops", class: "num" }),
      main: el("td", { "data-label": "Main series", class: "main-series" }),
    };
    const mainLabel = el("span", { class: "main-label" });
    const spark = el("div", { class: "spark", dataset: { points: "0" } });
    cells.main.append(mainLabel, spark);
    const row = el("tr", { dataset: { device: name } }, Object.values(cells));
    d = { name, info: null, row, cells, mainLabel, sparkNode: spark, chart: null, main: null,
          streamSeenMs: null, arrivals: [], dirty: true, status: null };
    devices.set(name, d);
    return d;
  }

  function lastSeenMs(d) {
    const polled = d.info && d.info.last_seen_ns !== null ? d.info.last_seen_ns / 1e6 : null;
    if (polled === null) return d.streamSeenMs;
    return d.streamSeenMs === null ? polled : Math.max(polled, d.streamSeenMs);
  }

  function rate(d, now) {
    while (d.arrivals.length && d.arrivals[0][0] < now - RATE_WINDOW_MS) d.arrivals.shift();
    if (streamStartMs === null) return NaN;
    const span = Math.max(1000, Math.min(RATE_WINDOW_MS, now - streamStartMs));
    return d.arrivals.reduce((n, [, c]) => n + c, 0) / (span / 1000);
  }

  function sortValue(d, key, now) {
    switch (key) {
      case "status": return STATUS_ORDER[d.status] ?? 9;
      case "lastSeen": return -(lastSeenMs(d) ?? -Infinity);
      case "rate": return rate(d, now);
      case "rejects": return d.info ? d.info.since_start.rejected : 0;
      case "drops": return d.info ? d.info.spool_dropped : 0;
      default: return d.name;
    }
  }

  let order = "";
  function arrange(force) {
    const now = serverNowMs();
    const list = [...devices.values()];
    list.sort((a, b) => {
      const x = sortValue(a, sort.key, now);
      const y = sortValue(b, sort.key, now);
      const c = typeof x === "string" ? x.localeCompare(y) : (x > y) - (x < y);
      return c * sort.dir || a.name.localeCompare(b.name);
    });
    for (const th of headRow.querySelectorAll("th[data-sort]")) {
      th.setAttribute("aria-sort", th.dataset.sort === sort.key ? (sort.dir > 0 ? "ascending" : "descending") : "none");
    }
    let shown = 0;
    for (const d of list) {
      d.row.hidden = filter !== "" && !d.name.toLowerCase().includes(filter);
      if (!d.row.hidden) shown += 1;
    }
    const next = list.map((d) => d.name).join("\n");
    if (force || next !== order) {
      order = next;
      tbody.append(...list.map((d) => d.row));
    }
    empty.hidden = devices.size > 0;
    root.dataset.shown = String(shown);
  }

  function render() {
    const now = serverNowMs();
    for (const d of devices.values()) {
      const seen = lastSeenMs(d);
      const status = deviceStatus(seen, d.info && d.info.revoked, ctx);
      if (status !== d.status) {
        d.status = d.row.dataset.status = status;
        const badge = d.cells.status.firstChild;
        badge.textContent = status;
        badge.className = `badge ${status}`;
      }
      setText(d.cells.lastSeen, seen === null ? "never" : formatAge(now - seen));
      d.cells.lastSeen.title = seen === null ? "" : new Date(seen).toISOString();
      setText(d.cells.rate, formatRate(rate(d, now)));
      setText(d.cells.rejects, d.info ? formatNumber(d.info.since_start.rejected) : "–");
      setText(d.cells.drops, d.info ? formatNumber(d.info.spool_dropped) : "–");
      if (d.main && d.dirty) drawSpark(d, now);
    }
    arrange(false);
  }

  // Writes only what changed: a large fleet re-renders twice a second.
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function drawSpark(d, now) {
    const b = series.get(d.main.series_id);
    if (!b) return;
    b.prune(now - SPARK_WINDOW_MS - SPARK_EVERY_MS);
    if (!d.chart) d.chart = sparkline(d.sparkNode);
    d.chart.setData(b.columns("avg"));
    d.dirty = false;
  }

  async function refreshDevices() {
    try {
      const fresh = await loadDevices(abort.signal);
      for (const [name, info] of fresh) rowFor(name).info = info;
      for (const name of [...devices.keys()]) {
        if (!fresh.has(name)) {
          const d = devices.get(name);
          if (d.chart) d.chart.destroy();
          d.row.remove();
          devices.delete(name);
        }
      }
      showError(null);
      render();
    } catch (err) {
      showError(err);
    }
  }

  // Each device's main series: its first series (by id) whose latest value is a number.
  async function refreshLatest() {
    try {
      const body = await getJSON("/api/v1/latest", {}, abort.signal);
      const firsts = new Map();
      for (const r of body.readings) {
        const numeric = typeof r.value === "number" || typeof r.value === "boolean";
        if (!numeric) continue;
        const best = firsts.get(r.device);
        if (!best || r.series_id < best.series_id) firsts.set(r.device, r);
      }
      const jobs = [];
      for (const [name, r] of firsts) {
        const d = rowFor(name);
        d.mainLabel.textContent = valueWithUnit(r.value, r.unit);
        d.mainLabel.title = seriesName(r);
        d.mainLabel.dataset.series = seriesName(r);
        if (!d.main || d.main.series_id !== r.series_id) {
          d.main = r;
          jobs.push(() => loadSpark(d, r));
        }
      }
      // A few at a time: a large fleet must not open a request per device at once.
      const queue = jobs.slice();
      const worker = async () => {
        while (queue.length && !abort.signal.aborted) await queue.shift()();
      };
      await Promise.all([worker(), worker(), worker(), worker()]);
      render();
    } catch (err) {
      showError(err);
    }
  }

  async function loadSpark(d, r) {
    const b = bucketsOf(r.series_id);
    for (const agg of ["sum", "count"]) {
      const rows = await getAllPages("/api/v1/aggregate", "aggregates", {
        device: globExact(r.device),
        sensor: globExact(r.sensor),
        field: r.field || undefined,
        since: "15m",
        until: `@${cutNs}`,
        every: SPARK_EVERY,
        agg,
        limit: 10000,
      }, abort.signal);
      for (const row of rows) if (row.series_id === r.series_id) b.addAggregate(agg, row);
    }
    d.dirty = true;
  }

  function onSummary(body) {
    const now = serverNowMs();
    const unknown = [];
    for (const s of body.buckets) {
      bucketsOf(s.series_id).addSummary(s);
      const d = devices.get(s.device);
      if (!d) {
        unknown.push(s.device);
        continue;
      }
      d.streamSeenMs = now;
      d.arrivals.push([now, s.count]);
      if (d.main && d.main.series_id === s.series_id) {
        d.dirty = true;
        if (s.last_ts_ns >= d.main.ts_ns) {
          d.main = { ...d.main, value: s.last, ts_ns: s.last_ts_ns };
          d.mainLabel.textContent = valueWithUnit(s.last, d.main.unit);
        }
      } else if (!d.main && (typeof s.last === "number" || typeof s.last === "boolean")) {
        unknown.push(s.device); // a first numeric series: look up its main series
      }
    }
    render();
    // A device or series this page has not seen yet: look both lists up again, at most
    // every few seconds.
    if (unknown.length && !lookup.pending && now - lookup.lastMs > DEVICES_POLL_MS) {
      lookup.pending = true;
      lookup.lastMs = now;
      refreshDevices()
        .then(refreshLatest)
        .finally(() => {
          lookup.pending = false;
        });
    }
  }

  async function start() {
    await refreshDevices();
    cutNs = serverNowNsText();
    stream = new EventStream("/api/v1/stream", { throttle: "1s", every: SPARK_EVERY }, {
      lastEventId: `${cutNs}.0`,
      onEvent: (type, body) => {
        if (type === "summary") onSummary(body);
      },
      onState: (state) => {
        if (state === "live" && streamStartMs === null) streamStartMs = serverNowMs();
        ctx.setStreamState(state);
      },
    });
    await refreshLatest();
    timers.push(setInterval(refreshDevices, DEVICES_POLL_MS));
    timers.push(setInterval(refreshLatest, LATEST_POLL_MS));
    timers.push(setInterval(render, TICK_MS));
    // Every series the stream mentioned keeps its buckets: drop those past the window.
    timers.push(setInterval(() => {
      const oldest = serverNowMs() - SPARK_WINDOW_MS - SPARK_EVERY_MS;
      for (const b of series.values()) b.prune(oldest);
    }, PRUNE_MS));
  }

  start();
  return () => {
    abort.abort();
    if (stream) stream.close();
    timers.forEach(clearInterval);
    health.close();
    for (const d of devices.values()) if (d.chart) d.chart.destroy();
  };
}
