"""The SQLite backend: one file in WAL mode, written by one writer at a time.

Owns the schema and its migrations (`store`), the group-commit transaction of validated
batches (`batchstore`, `bulkinsert`), the device registry and stream sessions (`devices`),
the packed block codec (`blocks`), compaction of the head into blocks (`compactor`,
`staging`, `merging`, `blockwrites`, `activity`) run by the maintenance process
(`maintainer`), retention (`retention`), reads of a time range from head and blocks
(`scan`), series resolution and the dead-letter listing (`series`), the tail cursor
(`tail`), dead-letter replay (`replay`), the ingest writer's session (`writesession`), file
statistics (`storagestats`), how it writes the SQL it shares with the other backend
(`dialect`), and the `Storage` face over all of them (`backend`).

May import: `schemas`, `collector/storage/` and the collector's top-level leaf modules.
Must not import `collector/ingest/`, `collector/query/`, `collector/web/` or
`collector/commands/`.
"""
