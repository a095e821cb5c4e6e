// Parsing and showing durations, numbers, sizes and times. No DOM, no network.

const UNIT_MS = { ms: 1, s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 604800e3 };

// "60s", "10m", "500ms", "1.5h" -> milliseconds; null if not a duration.
export function parseDurationMs(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$/.exec(String(text ?? ""));
  return m ? Number(m[1]) * UNIT_MS[m[2]] : null;
}

// The API's duration syntax for a number of milliseconds (whole units only).
export function durationText(ms) {
  for (const unit of ["w", "d", "h", "m", "s"]) {
    if (ms >= UNIT_MS[unit] && ms % UNIT_MS[unit] === 0) return `${ms / UNIT_MS[unit]}${unit}`;
  }
  return `${ms}ms`;
}

export function formatAge(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "never";
  const s = Math.max(0, ms) / 1000;
  if (s < 1) return "just now";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function formatNumber(v, digits = 3) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v !== "number") return String(v);
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return v.toLocaleString("en-US");
  const abs = Math.abs(v);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e9)) return v.toExponential(2);
  return Number(v.toPrecision(Math.max(digits, Math.ceil(Math.log10(abs + 1))))).toString();
}

export function formatRate(perSecond) {
  if (!Number.isFinite(perSecond)) return "–";
  if (perSecond >= 100) return Math.round(perSecond).toLocaleString("en-US");
  return perSecond.toFixed(1);
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function formatSeconds(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  if (s < 1e-3) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function formatTime(ms) {
  if (ms === null || ms === undefined) return "–";
  const d = new Date(ms);
  return d.toLocaleString(undefined, { hour12: false });
}

// "sensor" or "sensor.field" plus " (unit)".
export function seriesName(row, withUnit = false) {
  const name = row.field ? `${row.sensor}.${row.field}` : row.sensor;
  return withUnit && row.unit ? `${name} (${row.unit})` : name;
}

// A value with its unit, e.g. "21.4 C".
export function valueWithUnit(value, unit) {
  const text = formatNumber(value);
  return unit ? `${text} ${unit}` : text;
}

// Small DOM builder: el("td", {class: "x", dataset: {a: 1}}, "text", child).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
