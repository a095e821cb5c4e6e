"""The fault-injection suite's switch between its short and long forms.

Every scenario is parametrised by size. The short form runs in the normal test command; the
long form (tests marked `longform`) runs only when selected with `-m longform`
(`python3 tasks.py longform`), so the default run deselects it here.
"""

from __future__ import annotations

import resource

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    markexpr = str(config.getoption("-m") or "")
    if "longform" in markexpr:
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        (drop if item.get_closest_marker("longform") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def many_fds() -> int:
    """Raise this process's open-file soft limit to the hard limit; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.reliability.harness import FIGURES

    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for scenario, figures in FIGURES:
        shown = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
        )
        terminalreporter.write_line(f"{scenario}: {shown}")
