"""The spool: durable across reopen, bounded with exact drop counts, seq numbers persisted."""

from __future__ import annotations

import logging
import threading

import pytest

from agents.spool import Spool, SpoolError


def _r(i: int) -> list[object]:
    return ["s", "gauge", 1_000 + i, float(i), None, None]


def _values(readings: list[object]) -> list[float]:
    return [r[3] for r in readings]  # type: ignore[index]


def test_seal_ack_and_seq_numbers_survive_reopen(tmp_path, spools):
    path = tmp_path / "spool.db"
    sp = spools(path, max_readings=100, policy="drop-oldest")
    sp.put([_r(i) for i in range(5)])
    b1 = sp.seal(3)
    b2 = sp.seal(3)
    assert b1 is not None and b2 is not None
    assert (b1.seq, _values(b1.readings)) == (1, [0.0, 1.0, 2.0])
    assert (b2.seq, _values(b2.readings)) == (2, [3.0, 4.0])
    assert sp.seal(3) is None
    assert sp.ack(1) == 3
    sp.close()

    sp = spools(path, max_readings=100, policy="drop-oldest")
    again = sp.sealed_batches()
    assert [(b.seq, _values(b.readings)) for b in again] == [(2, [3.0, 4.0])]
    sp.put([_r(9)])
    b3 = sp.seal(10)
    assert b3 is not None and b3.seq == 3
    st = sp.stats()
    assert (st.pending, st.sealed, st.next_seq, st.acked_readings) == (0, 3, 4, 3)


def test_drop_oldest_counts_exactly_and_never_drops_sealed(tmp_path, spools):
    sp = spools(tmp_path / "s.db", max_readings=10, policy="drop-oldest")
    sp.put([_r(i) for i in range(4)])
    sealed = sp.seal(4)
    assert sealed is not None
    sp.put([_r(i) for i in range(4, 20)])  # 16 more into 6 free places
    st = sp.stats()
    assert st.dropped_total == 10 and st.dropped_unreported == 10
    assert len(sp) == 10
    assert _values(sp.sealed_batches()[0].readings) == [0.0, 1.0, 2.0, 3.0]
    assert _values(list(sp.iter_pending())) == [float(i) for i in range(14, 20)]
    sp.put([_r(20)])
    assert sp.stats().dropped_total == 11
    assert _values(list(sp.iter_pending()))[0] == 15.0
    sp.close()
    reopened = spools(tmp_path / "s.db", max_readings=10, policy="drop-oldest")
    assert reopened.stats().dropped_total == 11


def test_dropped_report_is_persisted_until_marked(tmp_path, spools):
    sp = spools(tmp_path / "s.db", max_readings=2, policy="drop-oldest")
    sp.put([_r(i) for i in range(5)])
    assert sp.take_unreported_dropped() == 3
    sp.mark_dropped_reported(3)
    sp.put([_r(5)])
    assert sp.take_unreported_dropped() == 1
    assert sp.stats().dropped_total == 4


def test_block_policy_stores_what_fits_and_waits_for_space(tmp_path, spools):
    sp = spools(tmp_path / "s.db", max_readings=3, policy="block")
    assert sp.put([_r(i) for i in range(5)]) == 3
    assert sp.put([_r(9)]) == 0
    assert sp.wait_for_space(timeout=0.01) is False
    batch = sp.seal(2)
    assert batch is not None
    freed = threading.Event()
    sp.add_space_listener(freed.set)
    waiter = threading.Thread(target=lambda: sp.wait_for_space(timeout=10))
    waiter.start()
    sp.ack(batch.seq)
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert freed.is_set()
    assert sp.put([_r(3), _r(4), _r(5)]) == 2
    assert sp.stats().dropped_total == 0


def test_resume_deletes_committed_batches(tmp_path, spools):
    sp = spools(tmp_path / "s.db", max_readings=100, policy="drop-oldest")
    sp.put([_r(i) for i in range(6)])
    for _ in range(3):
        sp.seal(2)
    assert sp.resume(2) == 4
    assert [b.seq for b in sp.sealed_batches()] == [3]
    assert sp.stats().acked_readings == 4


def test_resume_renumbers_when_collector_is_ahead_of_a_fresh_spool(tmp_path, spools):
    sp = spools(tmp_path / "s.db", max_readings=100, policy="drop-oldest")
    sp.put([_r(i) for i in range(4)])
    sp.seal(2)
    sp.seal(2)
    assert sp.resume(41) == 0
    assert [b.seq for b in sp.sealed_batches()] == [42, 43]
    sp.put([_r(9)])
    nxt = sp.seal(5)
    assert nxt is not None and nxt.seq == 44


def test_due_follows_size_and_delay(tmp_path, spools):
    sp = spools(tmp_path / "s.db", max_readings=100, policy="drop-oldest")
    assert sp.due(3, 60.0) is None
    sp.put([_r(0)])
    wait = sp.due(3, 60.0)
    assert wait is not None and 0 < wait <= 60.0
    sp.put([_r(1), _r(2)])
    assert sp.due(3, 60.0) == 0.0


def test_reopened_spool_with_pending_readings_is_due_at_once(tmp_path, spools):
    sp = spools(tmp_path / "s.db", max_readings=100, policy="drop-oldest")
    sp.put([_r(0)])
    sp.close()
    assert spools(tmp_path / "s.db", max_readings=100).due(10, 60.0) == 0.0


def test_spool_uses_wal(tmp_path, spools):
    spools(tmp_path / "s.db", max_readings=1, policy="block").close()
    import sqlite3

    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_bad_cap_is_refused(tmp_path, spools):
    with pytest.raises(ValueError, match="max_readings"):
        Spool(tmp_path / "s.db", max_readings=0, policy="block")


def test_drops_are_logged_at_most_once_a_minute(tmp_path, spools, caplog):
    sp = spools(tmp_path / "s.db", max_readings=2, policy="drop-oldest")
    with caplog.at_level(logging.WARNING, logger="agents.spool"):
        for i in range(10):
            sp.put([_r(i)])
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["spool full, dropped oldest readings dropped=1 cap=2 policy=drop-oldest"]
    assert sp.stats().dropped_total == 8


def test_one_agent_per_spool(tmp_path, spools):
    first = spools(tmp_path / "s.db")
    with pytest.raises(SpoolError, match="in use by another agent"):
        Spool(tmp_path / "s.db", max_readings=10, policy="block")
    first.close()
    spools(tmp_path / "s.db").put([_r(0)])


def test_unusable_path_is_a_spool_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SpoolError, match="cannot open spool"):
        Spool(tmp_path / "file" / "s.db", max_readings=10, policy="block")
