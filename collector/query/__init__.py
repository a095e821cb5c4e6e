"""The read side: what the CLI read commands and the HTTP API answer.

Owns parsing of query arguments and filters, series resolution, readings, bucketed
aggregates, latest values and listings (`readings`), the live tail cursor (`tail`), output
formats (`formats`) and the replay of stored rejects (`replay`).

May import: `schemas`, the collector's top-level leaf modules and `collector/storage/`.
Must not import `collector/ingest/` (except the validator that replay re-runs),
`collector/web/` or `collector/commands/`.
"""
