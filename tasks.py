#!/usr/bin/env python3
"""Project tasks that need nothing but Python 3.11+ and pip.

    python3 tasks.py demo [ARGS]   create .venv, install, run `telemetry demo ARGS`
    python3 tasks.py test          create .venv, install, then format check, lint, mypy, pytest
    python3 tasks.py longform      the long form of the fault-injection suite
    python3 tasks.py setup         only create .venv and install

The virtual environment lives in `.venv/` beside this file and is reused when its
install stamp is newer than pyproject.toml.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".installed"


def _run(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    rc = subprocess.call([str(c) for c in cmd], cwd=ROOT)
    if rc != 0:
        sys.exit(rc)


def setup() -> None:
    """Create the virtualenv and install the project with every extra (idempotent)."""
    if sys.version_info < (3, 11):  # noqa: UP036  # run by any python3 on the machine
        sys.exit(f"error: Python 3.11+ is required, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating virtualenv {VENV}", flush=True)
        try:
            venv.EnvBuilder(with_pip=True).create(VENV)
        except (OSError, subprocess.CalledProcessError) as exc:
            sys.exit(
                f"error: could not create {VENV} ({exc}); on Debian/Ubuntu install "
                "the python3-venv package"
            )
    pyproject = ROOT / "pyproject.toml"
    if STAMP.exists() and STAMP.stat().st_mtime >= pyproject.stat().st_mtime:
        return
    _run(
        PY,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-e",
        f"{ROOT}[collector,system,fast,dev]",
    )
    STAMP.touch()


def test() -> None:
    setup()
    _run(BIN / "ruff", "format", "--check", ".")
    _run(BIN / "ruff", "check", ".")
    _run(BIN / "mypy")
    _run(PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *sys.argv[2:])


def demo() -> None:
    setup()
    os.execv(str(BIN / "telemetry"), [str(BIN / "telemetry"), "demo", *sys.argv[2:]])


def longform() -> None:
    setup()
    _run(
        PY,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "longform",
        "--timeout=3600",
        "tests/reliability",
        *sys.argv[2:],
    )


TASKS = {"setup": setup, "test": test, "demo": demo, "longform": longform}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        sys.exit(f"usage: python3 tasks.py {{{'|'.join(TASKS)}}} [ARGS]")
    TASKS[sys.argv[1]]()
