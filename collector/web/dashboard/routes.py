"""Routes of the dashboard: the page at `/` and its static files under `/dashboard/`.

The page needs the read token when the collector has one, given once as `?token=` (the
page's script keeps it in sessionStorage, drops it from the address bar and sends it as
`Authorization: Bearer` on every API request) or as that header. Without it the answer is
401 with a small page asking for the token. Static files are the package's own code and
styles, public like the package; only files listed at start-up are served, each with an
explicit content type, so nothing outside static/ (and no unknown kind of file) can be asked
for.

Files are found once at start-up; requests read them through aiohttp's FileResponse (no
blocking read on the loop). Must not read the database or log per request.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Final

from aiohttp import web

from collector.web import api as http_api

HERE: Final = Path(__file__).resolve().parent
STATIC_DIR: Final = HERE / "static"
STATIC_PREFIX: Final = "/dashboard/"
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".md": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE
}
# The page loads only its own files and talks only to this collector; inline scripts are
# never needed. uPlot sets element styles through the CSSOM, which style-src does not cover.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_STATIC: Final = web.AppKey("telemetry_dashboard_static", dict[str, tuple[Path, str]])
_PAGES: Final = web.AppKey("telemetry_dashboard_pages", dict[str, bytes])
_TOKEN: Final = web.AppKey("telemetry_dashboard_token", str)


def static_files() -> dict[str, tuple[Path, str]]:
    """Every file under static/ that may be served: its URL path -> (file, content type)."""
    out: dict[str, tuple[Path, str]] = {}
    for path in sorted(STATIC_DIR.rglob("*")):
        rel = path.relative_to(STATIC_DIR)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        ctype = CONTENT_TYPES.get(path.suffix)
        if ctype is not None:
            out[rel.as_posix()] = (path, ctype)
    return out


def register(app: web.Application, *, token: str | None) -> None:
    """Add `/` and `/dashboard/{path}` to `app`; `token` is the API's read token (or None).

    Reads the two page templates and lists static/ now, once, at start-up.
    """
    app[_STATIC] = static_files()
    app[_PAGES] = {
        name: (HERE / f"{name}.html").read_bytes() for name in ("index", "token_required")
    }
    if token is not None:
        app[_TOKEN] = token
    app.router.add_get("/", _page)
    app.router.add_get(STATIC_PREFIX + "{path:.+}", _static)


def _authorized(request: web.Request) -> bool:
    token = request.app.get(_TOKEN)
    if token is None:
        return True
    if http_api.bearer_ok(request, token):
        return True
    given = request.query.get("token", "")
    return hmac.compare_digest(given.encode(), token.encode())


async def _page(request: web.Request) -> web.Response:
    pages = request.app[_PAGES]
    if not _authorized(request):
        return web.Response(
            body=pages["token_required"],
            status=401,
            content_type="text/html",
            charset="utf-8",
            headers={**PAGE_HEADERS, "WWW-Authenticate": "Bearer"},
        )
    return web.Response(
        body=pages["index"], content_type="text/html", charset="utf-8", headers=PAGE_HEADERS
    )


async def _static(request: web.Request) -> web.StreamResponse:
    found = request.app[_STATIC].get(request.match_info["path"])
    if found is None:
        raise web.HTTPNotFound(text="no such file\n")
    path, ctype = found
    # Revalidated on every load (Last-Modified): an upgraded collector's files show at once.
    return web.FileResponse(
        path,
        headers={
            "Content-Type": ctype,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        },
    )
