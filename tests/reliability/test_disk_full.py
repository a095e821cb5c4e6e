"""The database's filesystem fills up: nothing acknowledged is lost, ingest resumes by itself.

The collector's database lives on a small tmpfs mounted for the test (the suite runs as
root in CI; elsewhere the test is skipped with the reason). While a raw client and a real
agent stream, a filler file takes every free byte: commits fail with SQLITE_FULL, the
collector must stay up and answer RETRY (no ACK for anything it could not commit), and once
the filler is deleted the next retried batch must be committed within RESUME_S, without a
restart. At the end every ACKed batch and every reading the agent took is stored once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(FULL_SHORT, id="short"),
        pytest.param(FULL_LONG, id="long", marks=[pytest.mark.longform, pytest.mark.timeout(600)]),
    ],
)
def test_full_disk_answers_retry_and_resumes_by_itself(tmp_path, tiny_fs, size, request):
    db = tiny_fs / "full.db"
    filler = tiny_fs / "filler"
    tokens = add_devices(db, ["client", "agent"])
    agent = Agent(tmp_path, "agent", tokens["agent"])
    resumed: list[float] = []
    retries_while_full = 0
    with CollectorProcess(db, env=ENV) as daemon:
        assert daemon.proc is not None
        port = daemon.ingest[1]
        client = Streamer("client", tokens["client"], 1_000_000, [port], pace_s=0.005)
        agent.configure(
            port, counter_input([f"agent/s{j}" for j in range(5)], 100_000, interval="20ms")
        )
        try:
            client.start()
            agent.start()
            for _ in range(size.cycles):
                wait_for(lambda: client.acked_seq > 20, "client streaming", 30)
                fill(filler)
                r0 = client.retries
                wait_for(
                    lambda r0=r0: client.retries >= r0 + size.full_retries,  # type: ignore[misc]
                    "RETRY answers while the disk is full",
                    60,
                )
                retries_while_full += client.retries - r0
                assert daemon.proc.poll() is None, "the collector died on a full disk"
                acked = client.acked_seq
                filler.unlink()
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
        allv = sorted(st.ints(key) + spool.get(key[1], []))
        assert allv == list(range(1, len(allv) + 1)), key
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
