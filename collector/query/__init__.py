"""The read side: what the CLI read commands and the HTTP API answer.

Owns parsing of query arguments and filters, series resolution, readings, bucketed
aggregates, latest values and listings (`readings`, over `collector.storage.interface`) and
output formats (`formats`). The live tail cursor and the replay of stored rejects are the
storage's (`Storage.tail`, `Storage.replay_rejected`).

May import: `schemas`, the collector's top-level leaf modules and `collector/storage/`'s
interface. Must not import a backend, `collector/ingest/`, `collector/web/` or
`collector/commands/`.
"""
