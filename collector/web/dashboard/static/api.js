// The collector's JSON API as the page uses it: the read token, GET helpers, the server clock.
//
// The token arrives once as `?token=` on the page address; it is kept in sessionStorage
// (this tab only, gone when the tab closes), removed from the address bar, and sent as
// `Authorization: Bearer` on every request.

const TOKEN_KEY = "telemetry.token";

export function adoptToken() {
  const url = new URL(location.href);
  const token = url.searchParams.get("token");
  if (token === null) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  url.searchParams.delete("token");
  history.replaceState(history.state, "", url.pathname + url.search + url.hash);
}

export function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function apiUrl(path, params = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null) continue;
    for (const item of [].concat(value)) url.searchParams.append(key, String(item));
  }
  return url;
}

export async function getJSON(path, params = {}, signal = undefined) {
  const resp = await fetch(apiUrl(path, params), {
    headers: { ...authHeaders(), Accept: "application/json" },
    cache: "no-store",
    signal,
  });
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try {
      const body = await resp.json();
      if (body && body.error) message = body.error;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(resp.status, message);
  }
  return resp.json();
}

// Every page of a paginated route (`next` cursor), rows under `key`.
export async function getAllPages(path, key, params = {}, signal = undefined) {
  const rows = [];
  let cursor = null;
  do {
    const body = await getJSON(path, { ...params, cursor }, signal);
    rows.push(...body[key]);
    cursor = body.next;
  } while (cursor);
  return rows;
}

// A device or sensor name as an exact match in the API's GLOB filters.
export function globExact(name) {
  return name.replace(/[[*?]/g, (c) => `[${c}]`);
}

// The collector's clock: last-seen ages are measured against it, not the browser's.
let offsetMs = 0;

export function noteServerTime(nowNs) {
  if (typeof nowNs === "number") offsetMs = nowNs / 1e6 - Date.now();
}

export function serverNowMs() {
  return Date.now() + offsetMs;
}

// Server time as an exact integer-nanosecond string (for `until=@...` and event ids).
export function serverNowNsText() {
  return `${Math.floor(serverNowMs())}000000`;
}
