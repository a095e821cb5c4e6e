"""Storage: where readings, series, devices, sessions and dead letters are kept.

One interface for the rest of the collector (`interface`), the choice of a backend from a
`db` setting (`factory`), how readings look as rows whatever the backend and the SQL the
backends write alike (`rows`), and one package per backend (`sqlite/`, `postgres/`).
Ingest, query and web talk to the interface, never to a backend's tables.

May import: `schemas` and the collector's top-level leaf modules (`errors`, `durations`).
Must not import `collector/ingest/`, `collector/query/`, `collector/web/` or
`collector/commands/`.
"""
