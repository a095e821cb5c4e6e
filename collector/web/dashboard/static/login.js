// The 401 page of `/`: reuse the token this tab already holds, or ask for it.
// A token that was just refused is forgotten, so a wrong one cannot loop.
const KEY = "telemetry.token";

const url = new URL(location.href);
const stored = sessionStorage.getItem(KEY);
const message = document.getElementById("login-message");
if (url.searchParams.has("token")) {
  sessionStorage.removeItem(KEY);
  message.textContent = "That token was refused. Enter the collector's read token.";
} else if (stored) {
  url.searchParams.set("token", stored);
  location.replace(url.toString());
}
// Keep the page's other settings (e.g. stale=, offline=) across the form.
const form = document.getElementById("login-form");
for (const [name, value] of url.searchParams) {
  if (name === "token") continue;
  const input = document.createElement("input");
  input.type = "hidden";
  input.name = name;
  input.value = value;
  form.append(input);
}
