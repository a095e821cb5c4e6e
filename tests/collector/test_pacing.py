"""collector.ingest.pacing: when the writer runs maintenance steps (pure timekeeping)."""

from __future__ import annotations

import time

from collector.ingest import pacing


def test_maintenance_share_grows_while_work_keeps_waiting():
    clock = pacing.MaintenanceClock(1.0)
    assert clock.share(100.0) == pacing.MAINTENANCE_SHARE  # nothing waiting
    clock.ran(100.0, 100.1, more=True, loaded=True)
    assert clock.share(100.0) == pacing.MAINTENANCE_SHARE
    half = clock.share(100.0 + pacing.MAINTENANCE_RAMP_S / 2)
    assert pacing.MAINTENANCE_SHARE < half < pacing.MAINTENANCE_MAX_SHARE
    clock.ran(110.0, 110.1, more=True, loaded=True)  # still waiting: the ramp goes on
    assert clock.share(100.0 + 2 * pacing.MAINTENANCE_RAMP_S) == pacing.MAINTENANCE_MAX_SHARE
    clock.ran(200.0, 200.1, more=False, loaded=True)  # caught up: back to the base share
    assert clock.share(201.0) == pacing.MAINTENANCE_SHARE
    clock.ran(300.0, 300.1, more=True, loaded=True)  # a new wait starts a new ramp
    assert clock.share(300.0) == pacing.MAINTENANCE_SHARE


def test_under_load_steps_run_while_credit_lasts():
    clock = pacing.MaintenanceClock(1.0)
    steps = 0
    while clock.due_under_load():  # pending work: one step of 10 ms after another
        t0 = time.monotonic()
        clock.ran(t0, t0 + 0.01, more=True, loaded=True)
        steps += 1
        assert steps < 100
    # The burst allowance (plus what accrued meanwhile) buys about ten 10 ms steps.
    assert (
        round(pacing.MAINTENANCE_BURST_S / 0.01)
        <= steps
        <= round(pacing.MAINTENANCE_BURST_S / 0.01) + 2
    )


def test_debt_starts_after_work_waited_without_a_break():
    clock = pacing.MaintenanceClock(1.0)
    assert not clock.in_debt(100.0)
    clock.ran(100.0, 100.1, more=True, loaded=True)
    assert not clock.in_debt(100.0 + pacing.MAINTENANCE_DEBT_S - 0.1)
    assert clock.in_debt(100.0 + pacing.MAINTENANCE_DEBT_S)
    clock.ran(120.0, 120.1, more=False, loaded=True)  # caught up
    assert not clock.in_debt(121.0)
