// One device: a live chart per series, its latest values with units, and its recent
// rejected readings with their reasons. Charts are aggregates from /api/v1/aggregate (the
// query layer `telemetry query --every --agg` uses) up to a cut-off time, continued from
// the throttled event stream's summaries in the same bucket width.

import { getAllPages, getJSON, globExact, serverNowMs, serverNowNsText } from "./api.js";
import { AGGS, BucketSeries, aggregatesFor, lineChart } from "./charts.js";
import { durationText, el, formatAge, formatNumber, formatTime, parseDurationMs, seriesName, valueWithUnit } from "./format.js";
import { EventStream } from "./sse.js";
import { deviceStatus, loadDevices } from "./status.js";

export const RANGES = ["5m", "15m", "1h", "6h", "24h", "7d"];
export const BUCKETS = ["auto", "1s", "5s", "10s", "30s", "1m", "5m", "15m", "1h"];
const NICE_MS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400].map((s) => s * 1000);
const TARGET_POINTS = 300;
const MAX_POINTS = 5000;
const REJECTED_SHOWN = 20;
const POLL_MS = 5_000;
const TICK_MS = 1_000;

export function autoBucketMs(rangeMs) {
  const want = rangeMs / TARGET_POINTS;
  return NICE_MS.find((ms) => ms >= want) ?? NICE_MS[NICE_MS.length - 1];
}

// The page's settings from the hash's query: range, bucket width (every) and agg.
export function deviceSettings(params) {
  const range = RANGES.includes(params.get("range")) ? params.get("range") : "1h";
  const rangeMs = parseDurationMs(range);
  let every = params.get("every") || "auto";
  let everyMs = every === "auto" ? autoBucketMs(rangeMs) : parseDurationMs(every);
  if (everyMs === null || rangeMs / everyMs > MAX_POINTS) {
    every = "auto";
    everyMs = autoBucketMs(rangeMs);
  }
  const agg = AGGS.includes(params.get("agg")) ? params.get("agg") : "avg";
  return { range, rangeMs, every, everyMs, agg };
}

export function devicePage(root, ctx, name, params) {
  const abort = new AbortController();
  const timers = [];
  const settings = deviceSettings(params);
  const charts = new Map(); // series id -> {buckets, chart, card, dirty}
  const latest = new Map(); // series id -> {row, tr}
  let stream = null;
  let info = null;
  const exact = globExact(name);

  const error = el("p", { class: "error", hidden: true, role: "alert" });
  const statusBadge = el("span", { class: "badge", id: "device-status" });
  const facts = el("dl", { class: "facts" });
  const latestBody = el("tbody");
  const chartGrid = el("div", { class: "charts" });
  const rejectBody = el("tbody");
  const noRejects = el("p", { class: "muted", hidden: true }, "No rejected readings.");

  function select(id, label, options, value, shown = (o) => o) {
    const s = el("select", { id, "aria-label": label }, options.map((o) => el("option", { value: o, selected: o === value }, shown(o))));
    s.addEventListener("change", () => {
      const next = new URLSearchParams(params);
      next.set(id.replace("device-", ""), s.value);
      location.hash = `#/device/${encodeURIComponent(name)}?${next}`;
    });
    return el("label", { class: "control" }, `${label} `, s);
  }

  root.append(
    el("nav", { class: "crumbs" }, el("a", { href: "#/" }, "Fleet"), " / ", name),
    el("section", { class: "panel", id: "device" },
      el("div", { class: "panel-head" }, el("h2", {}, name), statusBadge),
      error,
      facts),
    el("section", { class: "panel", id: "latest" },
      el("div", { class: "panel-head" }, el("h2", {}, "Latest values")),
      el("div", { class: "table-wrap" },
        el("table", { class: "latest" },
          el("thead", {}, el("tr", {}, el("th", {}, "Series"), el("th", { class: "num" }, "Value"), el("th", {}, "Kind"), el("th", {}, "Time"))),
          latestBody))),
    el("section", { class: "panel", id: "charts" },
      el("div", { class: "panel-head" },
        el("h2", {}, "Charts"),
        el("div", { class: "controls" },
          select("device-range", "Range", RANGES, settings.range, (r) => `last ${r}`),
          select("device-every", "Bucket", BUCKETS, settings.every, (b) => (b === "auto" ? `auto (${durationText(settings.everyMs)})` : b)),
          select("device-agg", "Aggregate", AGGS, settings.agg))),
      chartGrid),
    el("section", { class: "panel", id: "rejected" },
      el("div", { class: "panel-head" }, el("h2", {}, "Rejected readings")),
      el("div", { class: "table-wrap" },
        el("table", { class: "rejected" },
          el("thead", {}, el("tr", {}, el("th", {}, "Received"), el("th", {}, "Code"), el("th", {}, "Path"), el("th", {}, "Reason"), el("th", {}, "Reading"))),
          rejectBody)),
      noRejects),
  );

  function showError(err) {
    if (abort.signal.aborted || (err && err.name === "AbortError")) return;
    error.hidden = !err;
    error.textContent = err ? `Could not load: ${err.message}` : "";
  }

  function fact(label, value) {
    return [el("dt", {}, label), el("dd", {}, value)];
  }

  function renderFacts() {
    if (!info) return;
    const seen = info.last_seen_ns === null ? null : info.last_seen_ns / 1e6;
    const status = deviceStatus(seen, info.revoked, ctx);
    statusBadge.textContent = status;
    statusBadge.className = `badge ${status}`;
    root.dataset.status = status;
    facts.replaceChildren(
      ...fact("Last seen", seen === null ? "never" : `${formatAge(serverNowMs() - seen)} (${formatTime(seen)})`),
      ...fact("Connected", info.connected ? `yes (${info.connections})` : "no"),
      ...fact("Readings stored", formatNumber(info.readings_total)),
      ...fact("Rejected since start", formatNumber(info.since_start.rejected)),
      ...fact("Spool drops reported", formatNumber(info.spool_dropped)),
      ...fact("Last sequence", formatNumber(info.last_seq)),
    );
  }

  async function refreshInfo() {
    try {
      const all = await loadDevices(abort.signal);
      info = all.get(name) ?? null;
      if (!info) throw new Error(`no device named ${name}`);
      showError(null);
      renderFacts();
    } catch (err) {
      showError(err);
    }
  }

  function setLatest(row) {
    let entry = latest.get(row.series_id);
    if (!entry) {
      const tr = el("tr", { dataset: { series: seriesName(row) } },
        el("td", { "data-label": "Series" }, seriesName(row)),
        el("td", { "data-label": "Value", class: "num value" }),
        el("td", { "data-label": "Kind" }, row.kind),
        el("td", { "data-label": "Time", class: "time" }));
      entry = { row, tr };
      latest.set(row.series_id, entry);
      const rows = [...latest.values()].sort((a, b) => seriesName(a.row).localeCompare(seriesName(b.row)));
      latestBody.append(...rows.map((e) => e.tr));
    }
    if (row.ts_ns < entry.row.ts_ns) return;
    entry.row = row;
    entry.tr.children[1].textContent = valueWithUnit(row.value, row.unit);
    entry.tr.children[3].title = new Date(row.ts_ns / 1e6).toISOString();
  }

  function renderLatestTimes() {
    const now = serverNowMs();
    for (const { row, tr } of latest.values()) tr.children[3].textContent = formatAge(now - row.ts_ns / 1e6);
  }

  function chartFor(row) {
    let c = charts.get(row.series_id);
    if (c) return c;
    const box = el("div", { class: "chart", dataset: { series: seriesName(row), seriesId: String(row.series_id), points: "0" } });
    const card = el("figure", { class: "chart-card" }, el("figcaption", {}, seriesName(row, true)), box);
    const all = [...charts.values(), { card, name: seriesName(row) }].sort((a, b) => (a.name ?? "").localeCompare(b.name ?? ""));
    c = { name: seriesName(row), card, box, row, buckets: new BucketSeries(settings.everyMs), chart: null, dirty: true };
    charts.set(row.series_id, c);
    chartGrid.append(...all.map((x) => x.card));
    return c;
  }

  function drawCharts() {
    const oldest = serverNowMs() - settings.rangeMs - settings.everyMs;
    for (const c of charts.values()) {
      if (!c.dirty) continue;
      c.buckets.prune(oldest);
      if (!c.chart) c.chart = lineChart(c.box, seriesName(c.row), c.row.unit);
      c.chart.setData(c.buckets.columns(settings.agg));
      c.dirty = false;
    }
    chartGrid.dataset.ready = "true";
  }

  async function refreshRejected() {
    try {
      const body = await getJSON("/api/v1/rejected", { device: exact, order: "desc", limit: REJECTED_SHOWN }, abort.signal);
      rejectBody.replaceChildren(...body.rejected.map((r) => el("tr", { dataset: { code: r.code } },
        el("td", { "data-label": "Received", title: r.received }, formatTime(r.received_ns / 1e6)),
        el("td", { "data-label": "Code" }, el("code", {}, r.code)),
        el("td", { "data-label": "Path" }, r.path ?? ""),
        el("td", { "data-label": "Reason", class: "reason" }, r.message),
        el("td", { "data-label": "Reading", class: "reading" }, el("code", {}, r.reading ?? "")))));
      noRejects.hidden = body.rejected.length > 0;
    } catch (err) {
      showError(err);
    }
  }

  function chartable(value) {
    return typeof value === "number" || typeof value === "boolean";
  }

  async function loadCharts(cutNs) {
    const body = await getJSON("/api/v1/latest", { device: exact }, abort.signal);
    for (const row of body.readings) {
      setLatest(row);
      if (chartable(row.value)) chartFor(row);
    }
    renderLatestTimes();
    for (const agg of aggregatesFor(settings.agg)) {
      const rows = await getAllPages("/api/v1/aggregate", "aggregates", {
        device: exact,
        since: settings.range,
        until: `@${cutNs}`,
        every: durationText(settings.everyMs),
        agg,
        limit: 10000,
      }, abort.signal);
      for (const row of rows) {
        const c = charts.get(row.series_id);
        if (c) c.buckets.addAggregate(agg, row);
      }
    }
    for (const c of charts.values()) c.dirty = true;
    drawCharts();
  }

  function onSummary(body) {
    for (const s of body.buckets) {
      const row = { ...s, value: s.last, ts_ns: s.last_ts_ns };
      setLatest(row);
      if (!chartable(s.last) && !charts.has(s.series_id)) continue;
      const c = chartFor(row);
      c.buckets.addSummary(s);
      c.dirty = true;
    }
    if (info) info.last_seen_ns = Math.max(info.last_seen_ns ?? 0, serverNowMs() * 1e6);
    drawCharts();
    renderLatestTimes();
    renderFacts();
  }

  async function start() {
    await refreshInfo();
    const cutNs = serverNowNsText();
    // Opened before the history loads: summaries that arrive meanwhile wait in the charts'
    // buckets (readings from cutNs on); the history covers the readings before it.
    stream = new EventStream("/api/v1/stream", { device: exact, throttle: "1s", every: durationText(settings.everyMs) }, {
      lastEventId: `${cutNs}.0`,
      onEvent: (type, body) => {
        if (type === "summary") onSummary(body);
      },
      onState: ctx.setStreamState,
    });
    try {
      await loadCharts(cutNs);
    } catch (err) {
      showError(err);
    }
    await refreshRejected();
    timers.push(setInterval(refreshInfo, POLL_MS));
    timers.push(setInterval(refreshRejected, POLL_MS));
    timers.push(setInterval(() => {
      renderFacts();
      renderLatestTimes();
    }, TICK_MS));
  }

  start();
  return () => {
    abort.abort();
    if (stream) stream.close();
    timers.forEach(clearInterval);
    for (const c of charts.values()) if (c.chart) c.chart.destroy();
  };
}
