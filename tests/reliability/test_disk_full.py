"""The database's filesystem fills up: nothing acknowledged is lost, ingest resumes by itself.

Two ways to fill it up, same test:

* `tmpfs`: the collector daemon (a subprocess) keeps its database on a small tmpfs mounted
  for the test; a filler file takes every free byte, deleting it gives the space back.
  Mounting needs root; without it this variant is skipped with the reason.
* `page-limit`: needs nothing special. The collector runs in this process
  (`collector.daemon.serve`) with a maintenance hook that applies `PRAGMA max_page_count`
  on the writer's connection (the hook runs in the writer thread, between commits): clamped
  to the current size the database is full, raised again it has room.

While a raw client and a real agent stream, commits fail with SQLITE_FULL: the collector
must stay up and answer RETRY (no ACK for anything it could not commit), and once space
returns the next retried batch must be committed within RESUME_S, without a restart. At the
end every ACKed batch and every reading the agent took is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from collector.config import load_config
from collector.daemon import serve
from collector.storage.sqlite import compactor
from tests.collector.wireclient import CollectorProcess
from tests.reliability.harness import (
    ENV,
    Agent,
    Streamer,
    add_devices,
    assert_exactly_once,
    counter_input,
    integrity,
    report,
    stored,
    wait_for,
)

TMPFS_MB = 24
MAX_PAGES = 1 << 30
RESUME_S = 5.0


@dataclass(frozen=True)
class FullSize:
    cycles: int
    full_retries: int  # RETRY answers the client must see while the disk is full


FULL_SHORT = FullSize(1, 3)
FULL_LONG = FullSize(5, 10)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def fill(path: Path) -> int:
    """Write `path` until the filesystem is full; returns the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as fh:
        for chunk in (1 << 20, 1 << 12, 1 << 9):
            block = b"\xa5" * chunk
            while True:
                try:
                    written += fh.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        with contextlib.suppress(OSError):
            os.fsync(fh.fileno())
    return written


class Tmpfs:
    """The database on the tiny tmpfs; a filler file takes the space, deleting it frees it."""

    def __init__(self, mnt: Path) -> None:
        self.db = mnt / "full.db"
        self.filler = mnt / "filler"

    @contextlib.contextmanager
    def collector(self) -> Iterator[tuple[int, Callable[[], bool]]]:
        with CollectorProcess(self.db, env=ENV) as daemon:
            proc = daemon.proc
            assert proc is not None
            yield daemon.ingest[1], lambda: proc.poll() is None

    def exhaust(self) -> None:
        fill(self.filler)

    def release(self) -> None:
        self.filler.unlink()


class PageLimit:
    """No root needed: the collector runs in this process (collector.daemon.serve) and its
    maintenance hook, which runs in the writer thread on the write connection, applies
    `PRAGMA max_page_count`: clamped to the file's current size, the database is full."""

    def __init__(self, tmp: Path) -> None:
        self.db = tmp / "full.db"
        self.pages = MAX_PAGES

    def _hook(self, conn: sqlite3.Connection, now_ns: int) -> bool:
        conn.execute(f"PRAGMA max_page_count = {self.pages}")
        return compactor.maintenance(conn, now_ns)

    @contextlib.contextmanager
    def collector(self) -> Iterator[tuple[int, Callable[[], bool]]]:
        cfg = load_config(
            None, env={}, overrides={"listen": "127.0.0.1:0", "http": "off", "db": str(self.db)}
        )
        bound: list[int] = []
        log = logging.getLogger("collector.daemon")

        class _Port(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                args = record.args
                if str(record.msg).startswith("listening") and isinstance(args, tuple):
                    bound.append(int(str(args[1])))  # args: (host, port, http)

        handler = _Port()
        old_level = log.level
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        box: dict[str, object] = {}
        started = threading.Event()

        async def main() -> None:
            stop = asyncio.Event()
            box["stop"] = stop
            box["loop"] = asyncio.get_running_loop()
            started.set()
            box["code"] = await serve(cfg, maintenance=self._hook, stop=stop)

        thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        thread.start()
        try:
            started.wait(30)
            wait_for(lambda: bool(bound) or not thread.is_alive(), "the collector to listen", 30)
            assert bound, "the in-process collector did not start"
            yield bound[0], thread.is_alive
        finally:
            loop = box.get("loop")
            stop = box.get("stop")
            if isinstance(loop, asyncio.AbstractEventLoop) and isinstance(stop, asyncio.Event):
                loop.call_soon_threadsafe(stop.set)
            thread.join(30)
            log.removeHandler(handler)
            log.setLevel(old_level)

    def exhaust(self) -> None:
        self.pages = 1  # SQLite clamps it to the current page count

    def release(self) -> None:
        self.pages = MAX_PAGES


@pytest.fixture(params=["tmpfs", "page-limit"])
def space(request: pytest.FixtureRequest, tmp_path: Path) -> Tmpfs | PageLimit:
    if request.param == "page-limit":
        return PageLimit(tmp_path)
    return Tmpfs(request.getfixturevalue("tiny_fs"))


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(FULL_SHORT, id="short"),
        pytest.param(FULL_LONG, id="long", marks=[pytest.mark.longform, pytest.mark.timeout(600)]),
    ],
)
def test_full_disk_answers_retry_and_resumes_by_itself(tmp_path, space, size, request):
    db = space.db
    tokens = add_devices(db, ["client", "agent"])
    agent = Agent(tmp_path, "agent", tokens["agent"])
    resumed: list[float] = []
    retries_while_full = 0
    with space.collector() as (port, alive):
        client = Streamer("client", tokens["client"], 1_000_000, [port], pace_s=0.005)
        agent.configure(
            port, counter_input([f"agent/s{j}" for j in range(5)], 100_000, interval="20ms")
        )
        try:
            client.start()
            agent.start()
            for _ in range(size.cycles):
                a0 = client.acked_seq
                wait_for(lambda a0=a0: client.acked_seq > a0 + 20, "client streaming", 30)  # type: ignore[misc]
                space.exhaust()
                r0 = client.retries
                wait_for(
                    lambda r0=r0: client.retries >= r0 + size.full_retries,  # type: ignore[misc]
                    "RETRY answers while the disk is full",
                    60,
                )
                retries_while_full += client.retries - r0
                assert alive(), "the collector died on a full disk"
                acked = client.acked_seq
                space.release()
                resumed.append(
                    wait_for(
                        lambda a=acked: client.acked_seq > a,  # type: ignore[misc]
                        "ingest to resume after space returned",
                        RESUME_S,
                    )
                )
            final = client.acked_seq + 50
            wait_for(lambda: client.acked_seq >= final, "client streaming after", 30)
            assert client.reconnects == 0, client.last_error
            agent_log = agent.text()
            agent.stop()  # SIGTERM: what it took is in its spool or stored
        finally:
            client.stop_flag.set()
            client.join(30)
            agent.stop()
        acked = client.acked_seq
    assert integrity(db) == "ok"
    # Every ACKed client batch is stored exactly once (batches answered RETRY were resent).
    assert_exactly_once(stored(db, "client"), client.expected(acked))
    # The agent's readings: stored ones plus those left in its spool are 1..n, each once.
    spool = agent.spooled()
    st = stored(db, "agent")
    assert st.total > 0
    for key in st.values:
        got = sorted(st.ints(key))
        assert len(got) == len(set(got)), key  # never stored twice
        spooled = spool.get(key[1], [])
        # SIGTERM does not wait for ACKs: a batch committed but not yet acknowledged is
        # stored and still spooled (the agent resends it on its next start and is answered
        # duplicate). Only the newest stored readings may be in both.
        both = sorted(set(got) & set(spooled))
        assert both == got[len(got) - len(both) :], key
        allv = sorted(set(got) | set(spooled))
        assert allv == list(range(1, len(allv) + 1)), key  # nothing lost
    assert "Traceback" not in agent_log
    report(
        request.node.name,
        {
            "cycles": size.cycles,
            "retries_while_full": retries_while_full,
            "resume_max_s": max(resumed),
            "client_batches": acked,
        },
    )
