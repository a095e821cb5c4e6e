"""The live web dashboard: static HTML, CSS and ES modules, and the routes that serve them.

Owns `/` (the page, behind the read token like /api/v1) and `/dashboard/...` (its static
files: code and styles, no data, so served without the token). The page reads everything it
shows through the collector's JSON API and event stream with the same token; nothing here
reads the database. May import aiohttp and `collector.web.api` (the token rule); nothing
imports this package but `collector.web.http`.

static/vendor/uplot/ is uPlot (MIT), vendored unchanged with its licence; static/README.md
names its version.
"""

from collector.web.dashboard.routes import STATIC_PREFIX, register

__all__ = ["STATIC_PREFIX", "register"]
