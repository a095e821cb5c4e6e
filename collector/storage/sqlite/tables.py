"""The SQLite backend's table and view names (docs/storage.md describes each).

`collector.storage.sqlite.store` re-exports them with the migrations that create the tables;
modules that store imports itself (collector.storage.sqlite.headchunks, used by a migration)
take the names from here, so the backend's modules import each other without cycles.
"""

from __future__ import annotations

from typing import Final

DEVICES: Final = "devices"
SERIES: Final = "series"
# m0001's head, one row per reading: m0006 moves its rows into HEAD_CHUNKS and drops it.
OLD_HEAD: Final = "readings_head"
HEAD_CHUNKS: Final = "head_chunks"
HEAD_VIEW: Final = "head_summary"
REJECTED: Final = "rejected"
BLOCKS: Final = "blocks"
HORIZON: Final = "compaction_horizon"
STREAMS: Final = "streams"
# m0002's view over OLD_HEAD, one row per reading; m0006 replaced it with HEAD_VIEW.
OLD_RECENT_VIEW: Final = "readings_recent"
BLOCKS_VIEW: Final = "blocks_summary"
