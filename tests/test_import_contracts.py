"""The import contracts in pyproject.toml ([tool.importlinter]) hold: which package may
import which (docs/architecture.md, "Rules that keep it honest")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / (
    "lint-imports.exe" if os.name == "nt" else "lint-imports"
)


def test_import_contracts_are_kept() -> None:
    if not LINT_IMPORTS.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{LINT_IMPORTS} is missing: CI must install the dev extra")
        pytest.skip("needs import-linter: pip install -e '.[dev]'")
    proc = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout
