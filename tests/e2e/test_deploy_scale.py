"""docker-compose.yml's `scale` profile is consistent with itself and with the HAProxy example
config it mounts: services, ports, the PROXY header's trusted address, health checks.

No Docker engine is needed: the file is parsed. The collectors' command goes through
`--check-config` with a SQLite file in place of their PostgreSQL URL (that backend is not
part of this check).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COLLECTORS = ("collector-1", "collector-2")
PG_URL = "postgresql://telemetry@postgres/telemetry"


def _services() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = data["services"]
    assert isinstance(services, dict)
    return services


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def _haproxy_cfg() -> str:
    haproxy = _services()["haproxy"]
    mounts = dict(str(v).split(":")[:2][::-1] for v in haproxy["volumes"])
    src = mounts["/usr/local/etc/haproxy/haproxy.cfg"]
    assert src.startswith("./")
    path = ROOT / src
    assert path.is_file(), f"{src} is mounted but does not exist"
    assert path == ROOT / "deploy" / "haproxy" / "haproxy.cfg"
    return path.read_text()


def test_scale_profile_services() -> None:
    services = _services()
    scale = {n for n, s in services.items() if "scale" in s.get("profiles", [])}
    assert scale == {"postgres", "haproxy", *COLLECTORS}
    # The demo stack keeps starting with a plain `docker compose up`.
    for name in ("collector", "agent-greenhouse", "agent-power-meter", "agent-tracker"):
        assert "profiles" not in services[name], name
    assert services["postgres"]["environment"]["POSTGRES_USER"] == "telemetry"
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "telemetry"
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]


def test_scale_collectors_use_postgres_and_trust_only_haproxy() -> None:
    services = _services()
    haproxy_ip = services["haproxy"]["networks"]["scale"]["ipv4_address"]
    for name in COLLECTORS:
        s = services[name]
        command = s["command"]
        assert command[0] == "collector"
        assert _flag(command, "--db") == PG_URL
        assert "--proxy-protocol" in command
        assert _flag(command, "--proxy-protocol-from") == f"{haproxy_ip}/32"
        assert _flag(command, "--listen") == "0.0.0.0:7878"
        assert _flag(command, "--http") == "0.0.0.0:7879"
        assert s["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        assert "/readyz" in " ".join(s["healthcheck"]["test"])
        assert s["networks"] == ["scale"]
        assert s["environment"]["TELEMETRY_HTTP_TOKEN"], "HTTP off loopback needs a token"


def test_published_ports_are_loopback_and_do_not_collide() -> None:
    published: dict[str, str] = {}
    for name, s in _services().items():
        for spec in s.get("ports", []):
            host_ip, host_port, _container = str(spec).split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {spec} beyond loopback"
            assert host_port not in published, f"{name} and {published.get(host_port)}: {spec}"
            published[host_port] = name
    assert published["7978"] == "haproxy"
    assert _services()["haproxy"]["ports"] == ["127.0.0.1:7978:7878"]


def test_haproxy_config_matches_the_collectors() -> None:
    cfg = _haproxy_cfg()
    services = _services()
    assert re.search(r"(?m)^\s+mode tcp$", cfg)
    assert re.search(r"(?m)^\s+balance leastconn$", cfg)
    assert re.search(r"(?m)^\s+bind :7878$", cfg), "the port haproxy publishes"
    assert "http-check send meth GET uri /readyz" in cfg
    default = re.search(r"(?m)^\s+default-server (.*)$", cfg)
    assert default is not None
    opts = default.group(1).split()
    assert "send-proxy-v2" in opts and "check" in opts
    assert opts[opts.index("port") + 1] == "7879", "checks go to the collectors' HTTP port"
    servers = re.findall(r"(?m)^\s+server (\S+) (\S+):(\d+)", cfg)
    assert [(n, h, int(p)) for n, h, p in servers] == [(n, n, 7878) for n in COLLECTORS]
    assert set(COLLECTORS) <= set(services)
    # Longer than the collector's idle timeout (45 s): HAProxy never cuts a healthy agent.
    for side in ("client", "server"):
        m = re.search(rf"(?m)^\s+timeout {side} (\d+)s$", cfg)
        assert m is not None and int(m.group(1)) > 45, side


def test_scale_collector_command_checks(tmp_path: Path) -> None:
    command = _services()["collector-1"]["command"]
    args = [str(tmp_path / "t.db") if a == PG_URL else a for a in command]
    result = subprocess.run(
        [sys.executable, "-m", "collector", *args, "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TELEMETRY_HTTP_TOKEN": "test-read-token"},
    )
    assert result.returncode == 0, result.stderr
    assert "PROXY header from 172.28.0.10/32" in result.stdout
