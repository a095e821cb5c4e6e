// The dashboard's entry point: adopt the read token, read the status thresholds, route.
//
// Routes live in the address's hash, so the page is loaded (and the token checked) once:
//   #/                                     fleet and collector health
//   #/device/NAME?range=1h&every=auto&agg=avg   one device
// Status thresholds come from the page's query: /?stale=60s&offline=10m (the defaults).

import { adoptToken } from "./api.js";
import { devicePage } from "./device.js";
import { fleetPage } from "./fleet.js";
import { parseDurationMs } from "./format.js";
import { DEFAULT_OFFLINE_MS, DEFAULT_STALE_MS } from "./status.js";

adoptToken();

const query = new URLSearchParams(location.search);
const staleMs = parseDurationMs(query.get("stale")) ?? DEFAULT_STALE_MS;
const offlineMs = Math.max(parseDurationMs(query.get("offline")) ?? DEFAULT_OFFLINE_MS, staleMs);
const main = document.getElementById("main");
const streamState = document.getElementById("stream-state");

const ctx = {
  staleMs,
  offlineMs,
  setStreamState(state) {
    streamState.dataset.state = state;
    streamState.textContent = { live: "live", reconnecting: "reconnecting…", refused: "token refused" }[state] ?? state;
  },
};

let leave = null;

function route() {
  if (leave) leave();
  leave = null;
  main.replaceChildren();
  ctx.setStreamState("connecting");
  const hash = location.hash || "#/";
  const m = /^#\/device\/([^?]+)(?:\?(.*))?$/.exec(hash);
  if (m) {
    const name = decodeURIComponent(m[1]);
    document.title = `${name} · Telemetry`;
    document.body.dataset.page = "device";
    leave = devicePage(main, ctx, name, new URLSearchParams(m[2] ?? ""));
  } else {
    document.title = "Fleet · Telemetry";
    document.body.dataset.page = "fleet";
    leave = fleetPage(main, ctx);
  }
  window.scrollTo(0, 0);
}

window.addEventListener("hashchange", route);
route();
