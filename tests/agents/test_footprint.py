"""What the agent imports decides its footprint on a device: keep it small and honest."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import agents

GOOD = Path(__file__).resolve().parent.parent / "fixtures" / "agent" / "config" / "good.toml"
HEAVY = ("collector", "pydantic", "pydantic_core", "sqlite_utils", "aiohttp", "click")


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(k for k, v in sys.modules.items() if v))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(out.split())


def test_hello_version_matches_the_package():
    assert agents.__version__ == version("sensor-telemetry")


def test_agent_runtime_imports_none_of_the_collector_dependencies():
    mods = _modules_after(
        "import agents.api, agents.runner, agents.transport, agents.spool\n"
        "from agents.sources import load_builtins\nload_builtins()"
    )
    assert {m.split(".")[0] for m in mods} & set(HEAVY) == set()
    assert "psutil" not in mods  # the system source imports it only when configured
    assert "_hashlib" not in mods  # OpenSSL's libcrypto (secrets, hmac, hashlib): 3.5 MB RSS


def test_cli_with_tls_off_runs_without_ssl_and_without_collector_code():
    mods = _modules_after(
        f"from pathlib import Path\nfrom agents.cli import _load\n_load(Path({str(GOOD)!r}))\n"
        "import asyncio"
    )
    assert "asyncio" in mods and "ssl" not in mods
    assert {m.split(".")[0] for m in mods} & {"collector", "pydantic", "sqlite_utils"} == set()
