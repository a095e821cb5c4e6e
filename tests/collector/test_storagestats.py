"""What /metrics reports about the file (collector.storage.sqlite.storagestats) and how it is
rendered."""

from __future__ import annotations

from pathlib import Path

from collector.storage.sqlite import compactor, storagestats, store
from collector.storage.sqlite.storagestats import StorageStats
from collector.web.metrics import Metrics

S = 10**9
W = compactor.WINDOW_NS


def _db(path: Path) -> None:
    store.migrate(path)
    conn = store.connect(path)
    conn.execute("INSERT INTO devices (id, name, token_hash, created_ns) VALUES (1, 'd', 'x', 0)")
    conn.executemany(
        "INSERT INTO series (id, device_id, sensor, kind) VALUES (?, 1, ?, 'gauge')",
        [(sid, f"s{sid}") for sid in (1, 2, 3)],
    )
    rows = [(k * W + i * 10 * S, sid, float(i)) for k in range(3) for i in range(6)
            for sid in (1, 2, 3)]  # fmt: skip
    conn.executemany("INSERT INTO readings_head (ts, series_id, value) VALUES (?, ?, ?)", rows)
    # The first two windows into small blocks (one per series each); the third stays.
    while compactor.compact_once(conn, 2 * W + compactor.GRACE_NS + 1):
        pass
    conn.close()


def test_the_numbers_are_the_files(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    _db(path)
    got = storagestats.read(path)
    assert (got.head_rows, got.head_oldest_ns) == (18, 2 * W)
    assert (got.blocks, got.small_blocks) == (6, 6)
    assert got.db_bytes == path.stat().st_size > 0
    assert got.wal_bytes == Path(f"{path}-wal").stat().st_size
    conn = store.connect(path, readonly=True)
    page, free = (
        conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "freelist_count")
    )
    conn.close()
    assert got.free_bytes == page * free


def test_rendered_as_gauges_and_an_empty_head_has_no_oldest_sample() -> None:
    m = Metrics()
    m.maintainer_restarts = lambda: 2
    text = m.render(StorageStats(7, 1_500_000_000, 3, 1, 4096, 0, 8192))
    lines = text.splitlines()
    for sample in ("telemetry_head_rows 7", "telemetry_head_oldest_timestamp_seconds 1.5",
                   "telemetry_blocks 3", "telemetry_small_blocks 1", "telemetry_db_bytes 4096",
                   "telemetry_wal_bytes 0", "telemetry_db_free_bytes 8192",
                   "telemetry_maintainer_restarts_total 2"):  # fmt: skip
        assert sample in lines, sample
    assert "# TYPE telemetry_head_rows gauge" in lines
    empty = m.render(StorageStats(0, None, 0, 0, 4096, 0, 0)).splitlines()
    assert "# TYPE telemetry_head_oldest_timestamp_seconds gauge" in empty
    assert not any(x.startswith("telemetry_head_oldest_timestamp_seconds ") for x in empty)
    assert not any(x.startswith("telemetry_head_rows") for x in m.render().splitlines())
