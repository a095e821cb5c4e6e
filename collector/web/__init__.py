"""The collector's HTTP server: health, metrics, the device list and the JSON API.

Owns the aiohttp application and its shared state (`http`), the read-only API routes
and their Server-Sent Events stream (`api`) and the in-process counters with their
Prometheus rendering (`metrics`).

May import: `schemas`, the collector's top-level modules, `collector/query/` and
`collector/storage/`. Must not import `collector/ingest/` or `collector/commands/`.
"""
