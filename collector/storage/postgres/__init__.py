"""The PostgreSQL backend: one database shared by any number of collectors.

Owns the schema and its migrations, the daily partitions of `readings` and retention by
dropping them (`schema`), the group-commit transaction under the streams' row locks
(`ingest`), the device registry and sessions (`devices`), the read path (`reads`) and its
tail cursor (`tail`), the replay of dead letters (`replay`) and the `Storage` face over them
(`backend`). Needs the `postgres` extra (psycopg 3 and psycopg-pool).

May import: `schemas`, `collector/storage/` (the SQLite registry's pure token helpers
included) and the collector's top-level leaf modules.
Must not import `collector/ingest/`, `collector/query/`, `collector/web/` or
`collector/commands/`.
"""
