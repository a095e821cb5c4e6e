// A device's status from the age of its last reading, and the shared /devices poll.

import { getJSON, noteServerTime, serverNowMs } from "./api.js";

export const DEFAULT_STALE_MS = 60_000;
export const DEFAULT_OFFLINE_MS = 600_000;
export const STATUS_ORDER = { live: 0, stale: 1, offline: 2, revoked: 3 };

export function deviceStatus(lastSeenMs, revoked, thresholds) {
  if (revoked) return "revoked";
  if (lastSeenMs === null || lastSeenMs === undefined) return "offline";
  const age = serverNowMs() - lastSeenMs;
  if (age < thresholds.staleMs) return "live";
  if (age < thresholds.offlineMs) return "stale";
  return "offline";
}

// /api/v1/devices as a Map name -> device; also sets the server clock.
export async function loadDevices(signal) {
  const body = await getJSON("/api/v1/devices", {}, signal);
  noteServerTime(body.now_ns);
  return new Map(body.devices.map((d) => [d.device, d]));
}
