"""Fixtures for the agent tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agents.config import SpoolPolicy
from agents.spool import Spool

OpenSpool = Callable[..., Spool]


@pytest.fixture
def spools() -> Iterator[OpenSpool]:
    """Open spools that are all closed (lock and database released) after the test."""
    opened: list[Spool] = []

    def open_spool(
        path: Path, *, max_readings: int = 1000, policy: SpoolPolicy = "drop-oldest"
    ) -> Spool:
        sp = Spool(path, max_readings=max_readings, policy=policy)
        opened.append(sp)
        return sp

    yield open_spool
    for sp in opened:
        sp.close()
