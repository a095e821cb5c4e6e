"""Foreign inputs: readings sent by other tools' protocols, fed to the same writer.

Owns the InfluxDB line-protocol writes over HTTP (`lineprotocol`, `influx_http`), the
Fluent forward listener (`fluent`, `fluent_server`), their device authentication (`auth`),
the mapping of foreign points to readings (`mapping`), their counters (`metrics`) and their
wiring into the daemon (`listeners`).

May import: `schemas`, the collector's top-level modules, `collector/ingest/` (validation and
the writer) and `collector/storage/`. Must not import `collector/query/`, `collector/web/` or
`collector/commands/`.
"""
