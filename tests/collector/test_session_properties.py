"""Property test of the session rules (protocol v1.1) against the real writer and a real SQLite
file: any interleaving of connects, reconnects, concurrent sessions of one stream, lost ACKs,
spool loss (a new stream, or a v1.0 agent starting again at seq 1) and resends.

Afterwards, and after every answer along the way:
- the stored set is exactly the readings some ACK counted as accepted, each counted once;
- an ACKed batch's readings are all stored, with their values, and its `accepted` is the
  number of them that were not stored before (so `duplicate` never hides a missing reading);
- a batch sent under an epoch its stream has moved past is fenced and stores nothing.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st

from collector.ingest.prepare import Ingest
from collector.ingest.writer import Writer
from collector.storage.sqlite import devices, store
from collector.storage.sqlite.backend import SQLiteStorage

ING = Ingest.from_kinds()
Key = tuple[str, int]  # (sensor, ts)


@dataclass
class Agent:
    name: str
    token: str
    v11: bool
    stream: str = ""
    next_seq: int = 1
    unacked: list[tuple[int, list[list[object]]]] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)  # sessions that may still send, oldest first
    spools: int = 0


def _stored(path: Path) -> dict[Key, object]:
    conn = store.connect(path, readonly=True)
    try:
        rows = conn.execute(
            f"SELECT s.sensor, h.ts, h.value FROM {store.HEAD} h "
            f"JOIN {store.SERIES} s ON s.id = h.series_id"
        ).fetchall()
    finally:
        conn.close()
    return {(str(s), int(ts)): v for s, ts, v in rows}


STEP = st.tuples(
    st.sampled_from(["connect", "new", "new", "send", "send", "send", "lose_spool"]),
    st.integers(0, 2),  # which agent
    st.integers(0, 3),  # how many readings / which session (0 = newest)
    st.booleans(),  # ACK lost on the way back
)


@settings(max_examples=100)
@given(
    v11=st.lists(st.booleans(), min_size=3, max_size=3),
    steps=st.lists(STEP, min_size=4, max_size=60),
)
def test_session_rules_store_exactly_what_was_acked(v11: list[bool], steps: list[object]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_run(Path(tmp) / "p.db", v11, steps))  # type: ignore[arg-type]


async def _run(path: Path, v11: list[bool], steps: list[tuple[str, int, int, bool]]) -> None:
    store.migrate(path)
    conn = store.connect(path)
    agents: list[Agent] = []
    tokens: dict[str, str] = {}
    for i, flag in enumerate(v11):
        # Agents 0 and 1 are one device (two processes, or a restarted one); 2 is another.
        name = "dev-a" if i < 2 else "dev-b"
        if name not in tokens:
            tokens[name] = devices.add_device(conn, name, time.time_ns())[1]
        agents.append(Agent(name, tokens[name], flag, stream=f"sp-{i}-0" if flag else ""))
    conn.close()
    newest: dict[tuple[str, str], int] = {}  # the epoch of each stream's newest HELLO
    w = Writer(SQLiteStorage(path))
    await w.start()
    accepted: dict[Key, object] = {}  # every reading an ACK counted as accepted
    ts = 0
    try:
        for op, who, n, lost in steps:
            a = agents[who]
            if op == "send" and not a.epochs:
                op = "connect"  # an agent with something to send connects first
            elif op == "send" and not a.unacked:
                op = "new"  # an agent with nothing to send reads its sensors
            if op == "connect":
                out = await w.hello(a.name, a.token, 0, a.stream)
                assert out.auth.device is not None
                a.epochs.append(out.epoch)
                assert out.epoch > newest.get((a.name, a.stream), 0)
                newest[(a.name, a.stream)] = out.epoch
                # WELCOME: what is committed is dropped; a spool behind the collector's
                # numbering (a v1.0 agent that lost its state) continues after last_seq.
                a.unacked = [(s, r) for s, r in a.unacked if s > out.last_seq]
                if a.next_seq <= out.last_seq:
                    shift = out.last_seq + 1 - (a.unacked[0][0] if a.unacked else a.next_seq)
                    a.unacked = [(s + shift, r) for s, r in a.unacked]
                    a.next_seq = out.last_seq + 1 + len(a.unacked)
            elif op == "new":
                readings = []
                for _ in range(n + 1):
                    ts += 1
                    readings.append([f"s/{who}", "gauge", ts, float(ts) / 4, None, None])
                a.unacked.append((a.next_seq, readings))
                a.next_seq += 1
            elif op == "send":
                epoch = a.epochs[-1 - min(n, len(a.epochs) - 1)]
                seq, readings = a.unacked[0]
                before = _stored(path)
                batch = ING.prepare(seq, readings, time.time_ns())
                outcome = await (await w.submit(_dev_id(path, a.name), batch, stream=a.stream,
                                                epoch=epoch))  # fmt: skip
                after = _stored(path)
                current = newest[(a.name, a.stream)] == epoch
                event(f"sent fenced={outcome.fenced} resend={outcome.resend}")
                if outcome.fenced:
                    assert not current, "the newest session of a stream was fenced"
                    assert after == before
                    continue
                assert current, "a batch of a replaced session was stored"
                keys = {(str(r[0]), int(r[2])): r[3] for r in readings}  # type: ignore[call-overload]
                new = {k for k in keys if k not in before}
                assert outcome.accepted == len(new)
                assert outcome.duplicate == len(keys) - len(new)
                for k, v in keys.items():
                    assert after.get(k) == v  # stored, and identical
                    if k in new:
                        assert k not in accepted
                        accepted[k] = v
                if not lost:
                    a.unacked.pop(0)
            elif op == "lose_spool":
                a.unacked = []
                a.next_seq = 1
                a.spools += 1
                if a.v11:
                    a.stream = f"sp-{who}-{a.spools}"
                a.epochs = []  # the old process and its connections are gone
    finally:
        await w.close()
    event(f"stored {min(len(accepted), 10)}+ readings")
    assert _stored(path) == accepted


def _dev_id(path: Path, name: str) -> int:
    conn = store.connect(path, readonly=True)
    try:
        dev = devices.get_device(conn, name)
    finally:
        conn.close()
    assert dev is not None
    return dev.id
