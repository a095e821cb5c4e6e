"""Fixtures shared by every test directory. Keep this small: area-specific fixtures live
beside their tests."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Bounded property tests: the suite runs on 2 shared cores. `HYPOTHESIS_PROFILE=thorough`
# runs more examples locally.
settings.register_profile(
    "default",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=5_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
