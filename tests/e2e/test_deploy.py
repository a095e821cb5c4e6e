"""Deployment files are real: compose, Dockerfile and systemd units name working commands.

No Docker engine is needed: the compose file is parsed, and every service's command is run
through `--check-config` with the configs it mounts; the healthcheck path is requested from a
real collector. The unit files go through `systemd-analyze verify`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.collector.wireclient import CollectorProcess

ROOT = Path(__file__).resolve().parents[2]
TELEMETRY = [sys.executable, "-m", "collector"]
# What the compose file sets for the collector; the image documents the same variable.
TOKEN_ENV = {**os.environ, "TELEMETRY_HTTP_TOKEN": "test-read-token"}


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _mounted_config(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> repository file, for the bind mounts of a service."""
    out = {}
    for vol in service.get("volumes", []):
        src, dst, *_ = str(vol).split(":")
        if src.startswith("./"):
            out[dst] = ROOT / src
    return out


def test_compose_has_collector_and_several_agents() -> None:
    services = _services()
    collector = services["collector"]
    agents = [name for name in services if name.startswith("agent-")]
    assert len(agents) >= 3
    assert collector["restart"] == "unless-stopped"
    assert collector["environment"]["TELEMETRY_HTTP_TOKEN"], "HTTP off loopback needs a token"
    assert any("telemetry-data:/var/lib/telemetry" in v for v in collector["volumes"])
    assert {"127.0.0.1:7878:7878", "127.0.0.1:7879:7879"} <= set(collector["ports"])
    for name in agents:
        depends = services[name]["depends_on"]
        assert depends == {"collector": {"condition": "service_healthy"}}


def test_every_agent_service_runs_a_valid_config() -> None:
    for name, service in _services().items():
        if not name.startswith("agent-"):
            continue
        command = service["command"]
        assert isinstance(command, list)
        assert command[:2] == ["agent", "--config"]
        config = _mounted_config(service)[command[2]]
        result = subprocess.run(
            [*TELEMETRY, *command[:2], str(config), "--check-config"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"


def test_collector_service_command_is_valid(tmp_path: Path) -> None:
    command = _services()["collector"]["command"]
    assert isinstance(command, list)
    assert command[0] == "collector"
    args = [a.replace("/var/lib/telemetry", str(tmp_path)) for a in command]
    result = subprocess.run(
        [*TELEMETRY, *args, "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=TOKEN_ENV,
    )
    assert result.returncode == 0, result.stderr


def test_dockerfile_cmd_is_valid_and_image_is_hardened(tmp_path: Path) -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2, "multi-stage build"
    assert re.search(r"^ARG PYTHON_IMAGE=", text, re.M), "base image is a build argument"
    assert re.search(r"^USER telemetry$", text, re.M), "runs as a non-root user"
    assert "HEALTHCHECK" in text and "/healthz" in text
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None
    args = yaml.safe_load(cmd.group(1))
    result = subprocess.run(
        [*TELEMETRY, *args, "--db", str(tmp_path / "t.db"), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=TOKEN_ENV,
    )
    assert result.returncode == 0, result.stderr


def test_healthcheck_path_answers_on_a_real_collector(tmp_path: Path) -> None:
    health = _services()["collector"]["healthcheck"]
    assert isinstance(health, dict)
    url = re.search(r"http://127\.0\.0\.1:7879(/\w+)", " ".join(health["test"]))
    assert url is not None
    with CollectorProcess(tmp_path / "t.db") as daemon:
        assert daemon.http is not None
        host, port = daemon.http
        with urllib.request.urlopen(f"http://{host}:{port}{url.group(1)}", timeout=10) as resp:
            assert resp.status == 200
        assert daemon.terminate() == 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_units_verify(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "telemetry"
    assert exe.exists()
    units = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
    assert {u.name for u in units} == {"telemetry-collector.service", "telemetry-agent.service"}
    for unit in units:
        text = unit.read_text()
        for needed in ("DynamicUser=yes", "ProtectSystem=strict", "StateDirectory=", "Restart="):
            assert needed in text, f"{unit.name} lacks {needed}"
        copy = tmp_path / unit.name
        copy.write_text(text.replace("/opt/telemetry/bin/telemetry", str(exe)))
        result = subprocess.run(
            ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert unit.name not in result.stderr, result.stderr
    assert "Type=notify" in (ROOT / "deploy/systemd/telemetry-collector.service").read_text()


def test_example_collector_config_checks(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *TELEMETRY,
            "collector",
            "--config",
            str(ROOT / "deploy/collector.example.toml"),
            "--db",
            str(tmp_path / "t.db"),
            "--check-config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
