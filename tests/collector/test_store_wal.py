"""The WAL file does not keep the size a backfill gave it (store.connect's pragmas)."""

from __future__ import annotations

from pathlib import Path

from collector.storage.sqlite import store


def test_wal_file_is_cut_back_when_it_starts_over(tmp_path: Path) -> None:
    # A backfill grows the WAL far past the limit; once a checkpoint has copied it all, the
    # next write starts it over and the file shrinks to the limit (store.connect's pragma).
    path = tmp_path / "t.db"
    conn = store.connect(path)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE filler (x BLOB)")
    limit = store.WAL_SIZE_LIMIT_BYTES
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO filler VALUES (?)", [(bytes(4000),)] * (limit // 4000 + 2_000))
    conn.execute("COMMIT")
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > limit
    other = store.connect(path)  # the maintenance process checkpoints on its own connection
    busy, frames, copied = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert (busy, copied) == (0, frames)
    conn.execute("INSERT INTO filler VALUES (x'00')")
    assert wal.stat().st_size <= limit
    other.close()
    conn.close()
