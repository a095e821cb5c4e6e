"""Ingest: from an accepted TCP connection to a committed, acknowledged batch.

Owns the asyncio accept loop and its per-connection sessions (`server`), the validation of
a batch's readings into rows and rejects (`prepare`), the one writer thread with its bounded
queue and group commit (`writer`) and the pacing of maintenance run in that thread
(`pacing`).

May import: `schemas`, the collector's top-level modules (`config`, `errors`, `tls`) and
`collector/storage/`. Must not import `collector/query/`, `collector/web/` or
`collector/commands/`.
"""
