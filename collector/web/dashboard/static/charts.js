// Time-bucketed series and their uPlot charts.
//
// A BucketSeries holds, per bucket start, what is needed to merge new readings exactly:
// count, sum, min, max and the last value. It is filled first from /api/v1/aggregate (sum
// and count for avg, or min / max / last) for readings before a cut-off time, then from the
// event stream's summaries (readings from the cut-off on), so no reading counts twice.

import uPlot from "./vendor/uplot/uPlot.esm.js";

export const AGGS = ["avg", "min", "max", "last"];

// Which /aggregate functions a chart of `agg` is built from.
export function aggregatesFor(agg) {
  return agg === "avg" ? ["sum", "count"] : [agg];
}

export class BucketSeries {
  constructor(everyMs) {
    this.everyMs = everyMs;
    this.buckets = new Map(); // bucket start (ms) -> {count, sum, min, max, last, lastTs}
  }

  bucket(startMs) {
    let b = this.buckets.get(startMs);
    if (!b) {
      b = { count: 0, sum: null, min: null, max: null, last: null, lastTs: -Infinity };
      this.buckets.set(startMs, b);
    }
    return b;
  }

  // One /aggregate row of function `agg`.
  addAggregate(agg, row) {
    const b = this.bucket(Math.round(row.ts_ns / 1e6));
    const v = typeof row.value === "boolean" ? Number(row.value) : row.value;
    if (agg === "count") b.count = v;
    else if (agg === "last") {
      b.last = v;
      b.lastTs = row.ts_ns;
    } else b[agg] = v;
  }

  // One bucket of a stream summary (same bucket width).
  addSummary(s) {
    const b = this.bucket(Math.round(s.ts_ns / 1e6));
    b.count += s.count;
    if (s.sum !== null) {
      b.sum = (b.sum ?? 0) + s.sum;
      b.min = b.min === null ? s.min : Math.min(b.min, s.min);
      b.max = b.max === null ? s.max : Math.max(b.max, s.max);
    }
    if (s.last_ts_ns >= b.lastTs) {
      b.last = typeof s.last === "boolean" ? Number(s.last) : s.last;
      b.lastTs = s.last_ts_ns;
    }
  }

  prune(oldestMs) {
    for (const start of this.buckets.keys()) if (start < oldestMs) this.buckets.delete(start);
  }

  // [x seconds[], y[]] for uPlot, buckets in time order.
  columns(agg) {
    const starts = [...this.buckets.keys()].sort((a, b) => a - b);
    const xs = [];
    const ys = [];
    for (const start of starts) {
      const b = this.buckets.get(start);
      let y;
      if (agg === "avg") y = b.count > 0 && b.sum !== null ? b.sum / b.count : null;
      else y = b[agg];
      if (y === null || y === undefined || typeof y !== "number") continue;
      xs.push(start / 1000);
      ys.push(y);
    }
    return [xs, ys];
  }
}

function themeColor(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

// Keeps a chart as wide as its container.
function fitWidth(plot, container, height) {
  const observer = new ResizeObserver(() => {
    const width = Math.max(120, Math.floor(container.clientWidth));
    if (width !== plot.width) plot.setSize({ width, height });
  });
  observer.observe(container);
  return observer;
}

// A chart whose container exposes the number of points drawn as data-points.
class Chart {
  constructor(container, opts, height) {
    this.container = container;
    this.height = height;
    const width = Math.max(120, Math.floor(container.clientWidth || 300));
    this.plot = new uPlot({ ...opts, width, height }, [[], []], container);
    this.observer = fitWidth(this.plot, container, height);
    container.dataset.points = "0";
  }

  setData(columns) {
    this.plot.setData(columns);
    this.container.dataset.points = String(columns[0].length);
  }

  destroy() {
    this.observer.disconnect();
    this.plot.destroy();
  }
}

export function sparkline(container) {
  const stroke = themeColor("--accent", "#2563eb");
  return new Chart(
    container,
    {
      class: "sparkline",
      legend: { show: false },
      cursor: { show: false },
      select: { show: false },
      scales: { x: { time: true } },
      axes: [{ show: false }, { show: false }],
      series: [{}, { stroke, width: 1.5, points: { show: false } }],
    },
    32,
  );
}

export function lineChart(container, label, unit) {
  const stroke = themeColor("--accent", "#2563eb");
  const axis = { stroke: themeColor("--muted", "#666"), grid: { stroke: themeColor("--grid", "#eee") } };
  return new Chart(
    container,
    {
      class: "series-chart",
      legend: { live: true },
      scales: { x: { time: true } },
      axes: [axis, { ...axis, size: 60, values: (_u, ticks) => ticks.map((t) => `${+t.toPrecision(6)}`) }],
      series: [
        {},
        {
          label: unit ? `${label} (${unit})` : label,
          stroke,
          width: 1.5,
          points: { show: (u) => u.data[0].length < 80 },
        },
      ],
    },
    220,
  );
}
