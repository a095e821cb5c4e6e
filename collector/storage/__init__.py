"""Storage: where readings, series, devices, sessions and dead letters are kept.

One interface for the rest of the collector (`interface`), one package per backend
(`sqlite/`, `postgres/`) and `factory.open_storage`, which picks the backend a database
string names. Ingest, query and web talk to the interface, never to a backend's tables.

May import: `schemas` and the collector's top-level leaf modules (`errors`, `durations`).
Must not import `collector/ingest/`, `collector/query/`, `collector/web/` or
`collector/commands/`.
"""
