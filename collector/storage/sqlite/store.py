"""The SQLite layout: migrations, table and column names, and how connections are opened.

Every other module names tables through the constants here. Migrations run through
sqlite-utils' `Migrations` at collector start-up (migrate -> start writer -> listen) and
are additive: a new migration function, never an edited one.

Tables (docs/storage.md has the full description):
    devices         one row per device: hashed token, revocation, last seen
    streams         one row per (device, stream): last committed seq and the session epoch
                    (protocol v1.1; the default stream "" is a v1.0 agent's)
    series          one row per (device, sensor, field, kind, unit, tags): the series id
    readings_head   recent readings, keyed (ts, series_id) WITHOUT ROWID: appends at the
                    right edge of the B-tree, so ingest stays flat as the file grows
    rejected        the dead-letter table: every rejected reading as received, with why
    blocks          compacted readings: one row per (series, window), packed by
                    collector.storage.sqlite.blocks, with count/first/last/min/max/sum beside the
                    bytes; small 1-minute blocks until their hour is merged into one block
    readings_recent view over the head with readable times and series names (Datasette,
                    Grafana's SQLite source); blocks_summary: the same for block summaries

This module opens connections and creates tables; it does not insert readings (that is
`collector.ingest.writer`, the one writer) and does not query them (`collector.query.readings`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Final, Literal

import sqlite_utils

DEVICES: Final = "devices"
SERIES: Final = "series"
HEAD: Final = "readings_head"
REJECTED: Final = "rejected"
BLOCKS: Final = "blocks"
HORIZON: Final = "compaction_horizon"
STREAMS: Final = "streams"
RECENT_VIEW: Final = "readings_recent"
BLOCKS_VIEW: Final = "blocks_summary"

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

# Page cache per connection, in KiB (negative cache_size is KiB in SQLite): the head and the
# series table stay hot.
CACHE_KIB: Final = 65_536
# Checkpoint less often than SQLite's default 1,000 pages: fewer, larger checkpoints measured
# 1.5-1.9x faster ingest on large files (shared/PERFORMANCE.md).
WAL_AUTOCHECKPOINT_PAGES: Final = 10_000
# When the WAL starts over from its beginning, the file is cut back to this size. A backfill
# grows it to ~200 MB (under constant writes it seldom starts over); without the limit it
# kept that size on disk until the collector stopped.
WAL_SIZE_LIMIT_BYTES: Final = 64 * 2**20
# Free pages are given back to the file system (reclaim_space) once there are at least
# this many (8 MiB of 4 KiB pages) and this share of the file, this many per step: below
# that, the next windows' head rows reuse them anyway. A step holds the write lock (2,048
# pages held it 30-112 ms on a busy host, 512 5-54 ms; 256 half that).
RECLAIM_MIN_FREE_PAGES: Final = 2_048
RECLAIM_MIN_FREE_FRACTION: Final = 0.1
RECLAIM_STEP_PAGES: Final = 256
_AUTO_VACUUM_INCREMENTAL: Final = 2
# How long a reader or writer waits for a lock before SQLITE_BUSY.
BUSY_TIMEOUT_MS: Final = 5_000

migrations = sqlite_utils.Migrations("telemetry")


@migrations()
def m0001_initial(db: sqlite_utils.Database) -> None:
    # `value` and `last_value` have no declared type, so no affinity: a reading is stored
    # exactly as sent (text "007" stays text, 21.0 stays REAL). `ANY` in a non-STRICT table
    # would mean NUMERIC affinity and turn both into the integers 7 and 21.
    db.executescript(
        f"""
        CREATE TABLE {DEVICES} (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            token_hash TEXT NOT NULL,
            created_ns INTEGER NOT NULL,
            revoked_ns INTEGER,
            last_seq INTEGER NOT NULL DEFAULT 0,
            last_seen_ns INTEGER,
            spool_dropped INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE {SERIES} (
            id INTEGER PRIMARY KEY,
            device_id INTEGER NOT NULL REFERENCES {DEVICES}(id),
            sensor TEXT NOT NULL,
            field TEXT NOT NULL DEFAULT '',
            kind TEXT NOT NULL,
            unit TEXT NOT NULL DEFAULT '',
            tags TEXT NOT NULL DEFAULT '{{}}',
            first_ts INTEGER,
            last_ts INTEGER,
            last_value,
            count INTEGER NOT NULL DEFAULT 0,
            UNIQUE (device_id, sensor, field, kind, unit, tags)
        );
        CREATE TABLE {HEAD} (
            ts INTEGER NOT NULL,
            series_id INTEGER NOT NULL,
            value,
            lag_ms INTEGER,
            PRIMARY KEY (ts, series_id)
        ) WITHOUT ROWID;
        CREATE TABLE {REJECTED} (
            id INTEGER PRIMARY KEY,
            device_id INTEGER NOT NULL REFERENCES {DEVICES}(id),
            received_ns INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            raw BLOB NOT NULL,
            reading TEXT NOT NULL,
            code TEXT NOT NULL,
            path TEXT NOT NULL,
            message TEXT NOT NULL,
            replayed_ns INTEGER
        );
        CREATE INDEX rejected_by_time ON {REJECTED}(received_ns);
        """
    )


@migrations()
def m0002_blocks(db: sqlite_utils.Database) -> None:
    # Compacted storage (collector.storage.sqlite.compactor writes it, collector.storage.sqlite.scan
    # reads it): one row per (series, window) holding that window's readings packed by
    # collector.storage.sqlite.blocks, with the summaries aggregates use without decoding. A rowid
    # table: the compactor writes a window at a time, so rows append and pages stay full (a
    # (series_id, start_ns) WITHOUT ROWID key measured half-empty pages); the small unique index
    # finds one series' blocks and the (start_ns) index serves retention and the compactor's merges.
    # Summary columns have no declared type (no affinity): a value is stored exactly as
    # given, where `ANY` in a non-STRICT table would mean NUMERIC affinity.
    db.executescript(
        f"""
        CREATE TABLE {BLOCKS} (
            id INTEGER PRIMARY KEY,
            series_id INTEGER NOT NULL,
            start_ns INTEGER NOT NULL,
            end_ns INTEGER NOT NULL,
            count INTEGER NOT NULL,
            first_ts INTEGER NOT NULL,
            last_ts INTEGER NOT NULL,
            first_value,
            last_value,
            min,
            max,
            sum,
            data BLOB NOT NULL,
            UNIQUE (series_id, start_ns)
        );
        CREATE INDEX blocks_by_start ON {BLOCKS}(start_ns, series_id);
        CREATE VIEW {RECENT_VIEW} AS
            SELECT
                strftime('%Y-%m-%dT%H:%M:%f', h.ts / 1000000000.0, 'unixepoch') || 'Z' AS time,
                h.ts AS ts,
                h.series_id AS series_id,
                d.name AS device,
                s.sensor AS sensor,
                s.field AS field,
                s.kind AS kind,
                s.unit AS unit,
                s.tags AS tags,
                h.value AS value
            FROM {HEAD} AS h
            JOIN {SERIES} AS s ON s.id = h.series_id
            JOIN {DEVICES} AS d ON d.id = s.device_id;
        CREATE VIEW {BLOCKS_VIEW} AS
            SELECT
                strftime('%Y-%m-%dT%H:%M:%f', b.start_ns / 1000000000.0, 'unixepoch') || 'Z'
                    AS window_start,
                strftime('%Y-%m-%dT%H:%M:%f', b.end_ns / 1000000000.0, 'unixepoch') || 'Z'
                    AS window_end,
                b.series_id AS series_id,
                d.name AS device,
                s.sensor AS sensor,
                s.field AS field,
                s.unit AS unit,
                b.count AS count,
                b.min AS min,
                b.max AS max,
                CASE WHEN b.sum IS NULL THEN NULL ELSE 1.0 * b.sum / b.count END AS avg,
                b.first_value AS first,
                b.last_value AS last,
                length(b.data) AS bytes
            FROM {BLOCKS} AS b
            JOIN {SERIES} AS s ON s.id = b.series_id
            JOIN {DEVICES} AS d ON d.id = s.device_id;
        """
    )


@migrations()
def m0003_small_blocks(db: sqlite_utils.Database) -> None:
    # Two-level compaction (collector.storage.sqlite.compactor): the head's 1-minute windows become
    # small blocks, merged per closed hour into one block per series. This partial index lists
    # the small blocks (shorter than the hour, 3_600 * 10**9 ns = compactor.MERGE_NS) by
    # start, so finding the oldest hour to merge never walks the merged blocks.
    db.execute(
        f"CREATE INDEX blocks_small_by_start ON {BLOCKS}(start_ns) "
        "WHERE end_ns - start_ns < 3600000000000"
    )


def small_blocks(merge_ns: int) -> str:
    """The WHERE condition of the blocks shorter than `merge_ns` (not merged into their hour
    yet). The bound is a literal, so SQLite can use m0003's partial index (whose condition
    is this one with compactor.MERGE_NS) to find and count them."""
    return f"end_ns - start_ns < {int(merge_ns)}"


@migrations()
def m0004_compaction_horizon(db: sqlite_utils.Database) -> None:
    # One row: every reading held in a block has a timestamp below `below_ns`. The writer
    # reads it in each transaction and looks into blocks (for readings resent after their
    # window was compacted) only below it; collector.storage.sqlite.blockwrites.insert_blocks raises
    # it with every block it writes. It only grows: retention dropping blocks leaves it, which
    # costs at most a look into blocks that finds nothing.
    db.executescript(
        f"""
        CREATE TABLE {HORIZON} (
            id INTEGER PRIMARY KEY CHECK (id = 0),
            below_ns INTEGER NOT NULL
        );
        INSERT INTO {HORIZON} (id, below_ns)
            SELECT 0, coalesce(max(last_ts) + 1, 0) FROM {BLOCKS};
        """
    )


@migrations()
def m0005_streams(db: sqlite_utils.Database) -> None:
    # Protocol v1.1: sequence numbers and the resume point are per (device, stream), and the
    # newest HELLO of a stream fences older sessions through `epoch` (checked in each write
    # transaction, so the rule holds across collector processes sharing the file). The
    # default stream "" takes over each device's v1.0 last_seq; devices.last_seq keeps
    # mirroring it for listings. The index lets a resend's rejects be kept once.
    db.executescript(
        f"""
        CREATE TABLE {STREAMS} (
            device_id INTEGER NOT NULL REFERENCES {DEVICES}(id),
            stream TEXT NOT NULL,
            last_seq INTEGER NOT NULL DEFAULT 0,
            epoch INTEGER NOT NULL DEFAULT 0,
            created_ns INTEGER NOT NULL,
            last_seen_ns INTEGER,
            PRIMARY KEY (device_id, stream)
        ) WITHOUT ROWID;
        INSERT INTO {STREAMS} (device_id, stream, last_seq, epoch, created_ns, last_seen_ns)
            SELECT id, '', last_seq, 0, created_ns, last_seen_ns FROM {DEVICES};
        CREATE INDEX rejected_by_seq ON {REJECTED}(device_id, seq);
        """
    )


def connect(
    path: str | Path,
    *,
    readonly: bool = False,
    synchronous: Synchronous = "FULL",
    check_same_thread: bool = True,
    factory: type[sqlite3.Connection] = sqlite3.Connection,
) -> sqlite3.Connection:
    """Open a connection with the project's pragmas (WAL, busy timeout, cache).

    Read-only connections use `mode=ro` so they can never take the write lock. `factory`
    is the sqlite3.Connection subclass of a writable connection.
    Raises sqlite3.OperationalError when the file cannot be opened.
    """
    if readonly:
        uri = f"{Path(path).resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=check_same_thread
        )
    else:
        conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=check_same_thread, factory=factory
        )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    if not readonly:
        # Before anything creates the file: a new, empty database is created in
        # incremental auto-vacuum mode, which lets the compactor give freed pages back to
        # the file system (reclaim_space, below); must precede the WAL switch. A file
        # created without auto-vacuum stays so; one left in full mode by a one-pass
        # reclaim that was cut short is put back in incremental mode.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
        conn.execute("PRAGMA foreign_keys = ON")
    return conn


def migrate(path: str | Path) -> list[str]:
    """Create or upgrade the database at `path`; returns the names of applied migrations."""
    conn = connect(path)
    try:
        db = sqlite_utils.Database(conn)
        pending = [m.name for m in migrations.pending(db)]
        migrations.apply(db)
        return pending
    finally:
        conn.close()


def reclaim_space(
    conn: sqlite3.Connection,
    *,
    min_free_pages: int = RECLAIM_MIN_FREE_PAGES,
    min_free_fraction: float = RECLAIM_MIN_FREE_FRACTION,
    step_pages: int = RECLAIM_STEP_PAGES,
    at_once: bool = False,
) -> bool:
    """One step of giving free pages back to the file system; True if it did one.

    Compaction frees the head's pages and rewritten blocks' pages; the file keeps them
    for reuse, so a backlog's transient head (a million rows or more) would stay on disk.
    Once free pages pass both bounds, `PRAGMA incremental_vacuum` moves up to `step_pages`
    pages from the end of the file into free slots and truncates it (at the next
    checkpoint, in WAL mode). A database created without auto_vacuum is left alone.

    `at_once` gives every free page back in one transaction instead: a commit in full
    auto-vacuum mode, then incremental mode again. It holds the write lock for the whole
    of it (~1 s for 100,000 free pages), so the caller asks for it only while no readings
    arrive; in exchange it costs a fraction of the steps' CPU, whose every page searches
    the free-page list (measured 0.90 against 6.70 s for the 100,000 free pages a 20M
    backlog leaves: docs/benchmarks-history.md, "The whole 20M run under 4 µs per reading").
    Commits any open transaction (executescript): call it outside one.
    """
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != _AUTO_VACUUM_INCREMENTAL:
        return False
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    if free < max(min_free_pages, pages * min_free_fraction):
        return False
    # executescript: the sqlite3 module steps a statement without result rows once, and
    # incremental_vacuum frees one page per step. In the connection's write turn, like
    # every other write of the maintenance process (collector.storage.sqlite.maintainer.Turns): the
    # writer then waits on the turn, woken when this commits, not in SQLite's busy handler
    # (which sleeps up to 100 ms between tries).
    with write_turn(conn):
        if not at_once:
            conn.executescript(
                f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum({int(step_pages)}); COMMIT;"
            )
            return True
        try:
            # The mode is a header field, written by its own transaction; at the commit
            # SQLite moves the pages in use below the free ones and truncates, one pass.
            conn.executescript("BEGIN IMMEDIATE; PRAGMA auto_vacuum = FULL; COMMIT;")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.executescript("BEGIN IMMEDIATE; PRAGMA auto_vacuum = INCREMENTAL; COMMIT;")
    return True


def write_turn(conn: sqlite3.Connection) -> contextlib.AbstractContextManager[None]:
    """The connection's `write_turn()` context (collector.storage.sqlite.maintainer gives its
    connection one: the ingest writer pauses meanwhile), or nothing for a plain connection."""
    turn = getattr(conn, "write_turn", None)
    return turn() if turn is not None else contextlib.nullcontext()
