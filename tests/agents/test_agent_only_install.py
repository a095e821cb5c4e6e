"""On a device without the collector extra, `telemetry agent` and `python -m agents` work.

The collector's dependencies are made unimportable in a subprocess (as on an agent-only
install: `pip install sensor-telemetry`), then the agent's command line is exercised.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# Importable only with the `collector` extra.
COLLECTOR_ONLY = (
    "pydantic",
    "pydantic_core",
    "sqlite_utils",
    "aiohttp",
    "cryptography",
    "numpy",
    "pcodec",
    "psycopg",
)

CONFIG = """
[agent]
device_id = "pi-1"
token = "t0ken"

[collector]
address = "127.0.0.1:9"

[spool]
path = "spool.db"

[[inputs.simulated]]
name = "greenhouse/air-temp"
kind = "temperature"
interval = "1s"
"""


def _config(tmp_path: Path) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG)
    return str(path)


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    prelude = textwrap.dedent(
        f"""
        import sys
        for name in {COLLECTOR_ONLY!r}:
            sys.modules[name] = None  # import raises ModuleNotFoundError, as if not installed
        sys.argv = ["telemetry", *{list(args)!r}]
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=60
    )


def test_telemetry_lists_only_what_is_installed_and_runs_the_agent(tmp_path: Path) -> None:
    res = _run("from collector.cli import main; main()", "--help")
    assert res.returncode == 0, res.stderr
    listed = {
        line.split()[0] for line in res.stdout.split("Commands:")[1].splitlines() if line.strip()
    }
    assert listed == {"agent"}

    res = _run(
        "from collector.cli import main; main()",
        "agent",
        "--config",
        _config(tmp_path),
        "--once",
        "--dry-run",
    )
    assert res.returncode == 0, res.stderr
    assert "greenhouse/air-temp" in res.stdout


def test_collector_subcommand_explains_the_missing_extra_in_one_line() -> None:
    res = _run("from collector.cli import main; main()", "collector", "--listen", "0.0.0.0:1")
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1
    assert "pip install 'sensor-telemetry[collector]'" in res.stderr


def test_python_m_agents_checks_config_without_collector_dependencies(tmp_path: Path) -> None:
    res = _run(
        "import runpy; runpy.run_module('agents', run_name='__main__')",
        "--config",
        _config(tmp_path),
        "--check-config",
    )
    assert res.returncode == 0, res.stderr
