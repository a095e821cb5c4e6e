"""`telemetry agent` / `python -m agents`: --check-config, --once --dry-run, config errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents.config import AgentConfigError, load_config, parse_duration_s
from agents.sources import source_names

CONFIG_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "agent" / "config"
GOOD = CONFIG_DIR / "good.toml"
ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "agents", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_load_good_config_resolves_paths_and_token_file():
    cfg = load_config(GOOD, known_sources=source_names())
    assert (cfg.device_id, cfg.token, cfg.host, cfg.port) == (
        "fixture-1",
        "tok-123",
        "127.0.0.1",
        7700,
    )
    assert cfg.spool_path == CONFIG_DIR / "spool" / "agent.db"
    assert cfg.tls.ca_file == CONFIG_DIR / "ca.pem"
    assert (cfg.batch_max_readings, cfg.batch_max_delay_s) == (100, 0.25)
    assert (cfg.spool_max_readings, cfg.spool_policy, cfg.heartbeat_ms) == (1000, "block", 5000)
    assert cfg.metrics_interval_s == 30.0
    sim = cfg.inputs[0]
    assert (sim.label, sim.names, sim.interval_s, sim.tags) == (
        "inputs.simulated[0]",
        ("lab/air-temp", "lab/soil-temp"),
        2.0,
        {"room": "lab"},
    )
    assert sim.options == {"waveform": "constant", "base": 21.5}
    assert [i.label for i in cfg.inputs] == [
        "inputs.simulated[0]",
        "inputs.simulated[1]",
        "inputs.file[0]",
    ]


def test_check_config_good_file():
    res = _run("--config", str(GOOD), "--check-config")
    assert res.returncode == 0, res.stderr
    assert f"{GOOD}: ok" in res.stdout
    assert "fixture-1 -> collector 127.0.0.1:7700" in res.stdout
    assert "inputs       3" in res.stdout and "tok-123" not in res.stdout


BAD_CASES = [
    ("[agent]\ntoken='t'\n", "[agent], key 'device_id': required"),
    ("[agent]\ndevice_id='d'\n", "[agent], key 'token': required"),
    ("[agent]\ndevice_id='d'\ntoken='t'\ntoken_file='x'\n", "key 'token_file': give either"),
    ("[agent]\ndevice_id='d'\ntoken_file='missing.txt'\n", "key 'token_file': cannot read"),
    (
        "[agent]\ndevice_id='d'\ntoken='t'\n[collector]\naddress='nohost'\n",
        "[collector], key 'address': must be \"host:port\"",
    ),
    (
        "[agent]\ndevice_id='d'\ntoken='t'\n[collector]\nadress='h:1'\n",
        "[collector], key 'adress': unknown key",
    ),
    (
        "[agent]\ndevice_id='d'\ntoken='t'\n[spool]\npolicy='drop-newest'\n",
        "[spool], key 'policy': must be one of drop-oldest, block",
    ),
    (
        "[agent]\ndevice_id='d'\ntoken='t'\n[batch]\nmax_readings=0\n",
        "[batch], key 'max_readings': must be an integer >= 1",
    ),
    (
        "[agent]\ndevice_id='d'\ntoken='t'\n[tls]\nenabled=true\nca_file='missing.pem'\n",
        "[tls], key 'ca_file': no such file",
    ),
    (
        "[agent]\ndevice_id='d'\ntoken='t'\n[tls]\ncert_file='c.pem'\n",
        "[tls], key 'key_file': 'cert_file' and 'key_file' go together",
    ),
    (
        "[agent]\ndevice_id='d'\ntoken='t'\n[[inputs.thermometer]]\nname='x'\n",
        "[[inputs.thermometer]]: unknown source",
    ),
    (
        "[agent]\ndevice_id='d'\ntoken='t'\n[[inputs.file]]\nname='x'\ninterval='soon'\n",
        "inputs.file[0], key 'interval': must be a duration",
    ),
    (
        "[agent]\ndevice_id='d'\ntoken='t'\n[[inputs.file]]\nname='x'\n",
        "inputs.file[0], key 'path': required",
    ),
    (
        "[agent]\ndevice_id='d'\ntoken='t'\n[[inputs.simulated]]\nwaveform='saw'\n",
        "inputs.simulated[0], key 'waveform': must be one of",
    ),
    ("[agent\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CASES)
def test_bad_config_is_one_line_naming_table_and_key(tmp_path, text, message):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(AgentConfigError) as info:
        from agents.runner import build_inputs

        build_inputs(load_config(path, known_sources=source_names()))
    assert message in str(info.value)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("command", [["-m", "agents"], ["-m", "collector", "agent"]])
def test_check_config_bad_file_exits_2_with_one_line(tmp_path, command):
    path = tmp_path / "agent.toml"
    path.write_text("[agent]\ndevice_id='d'\ntoken='t'\n[spool]\nmax_readings=-5\n")
    res = subprocess.run(
        [sys.executable, *command, "--config", str(path), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "error:" in lines[0] and "[spool], key 'max_readings'" in lines[0]
    assert res.stdout == ""


def test_missing_config_file_exits_2(tmp_path):
    res = _run("--config", str(tmp_path / "nope.toml"), "--check-config")
    assert res.returncode == 2 and "cannot read config" in res.stderr


def test_once_dry_run_prints_every_inputs_readings_without_connecting(tmp_path):
    # Port 7700 on 127.0.0.1 is never contacted: a dry run opens no socket and no spool.
    res = _run("--config", str(GOOD), "--once", "--dry-run")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(
        "> lab/air-temp kind=temperature value=21.5 unit=C tags=room=lab ts="
    )
    assert lines[0].endswith("input=inputs.simulated[0]")
    assert lines[1].startswith("> lab/soil-temp kind=temperature value=21.5 unit=C")
    assert lines[2].startswith('> truck/pos kind=gps value={"lat": ')
    assert lines[3].startswith("> cpu/temp kind=temperature value=42.5 unit=C tags=- ts=")
    assert not (CONFIG_DIR / "spool").exists()


def test_dry_run_reports_a_failing_input_and_exits_1(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text(
        "[agent]\ndevice_id='d'\ntoken='t'\n"
        "[[inputs.file]]\nname='gone'\npath='/nonexistent/value'\n"
        "[[inputs.simulated]]\nname='ok'\nwaveform='constant'\nbase=1.0\n"
    )
    res = _run("--config", str(path), "--dry-run")
    assert res.returncode == 1
    assert "inputs.file[0]: error: cannot read /nonexistent/value" in res.stderr
    assert res.stdout.startswith("> ok kind=gauge value=1.0")


def test_help_lists_the_options():
    res = _run("--help")
    assert res.returncode == 0
    for opt in ("--config", "--once", "--dry-run", "--check-config", "--log-level"):
        assert opt in res.stdout


@pytest.mark.parametrize(
    ("text", "seconds"), [(10, 10.0), (0.5, 0.5), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0)]
)
def test_durations(text, seconds):
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("bad", [0, -1, "10 parsecs", True, "", float("inf")])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration_s(bad)


def test_the_deploy_example_config_is_valid(tmp_path):
    text = (ROOT / "deploy" / "agent.example.toml").read_text()
    path = tmp_path / "agent.toml"
    path.write_text(text.replace('token_file = "/etc/telemetry/agent.token"', 'token = "x"'))
    from agents.runner import build_inputs

    cfg = load_config(path)
    assert [i.source for i in cfg.inputs] == ["file", "system", "command", "simulated"]
    assert len(build_inputs(cfg)) == 4


def test_unusable_spool_path_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    path = tmp_path / "agent.toml"
    path.write_text(
        "[agent]\ndevice_id='d'\ntoken='t'\n"
        f"[spool]\npath='{tmp_path / 'a-file' / 'spool.db'}'\n"
        "[[inputs.simulated]]\nname='x'\n"
    )
    res = _run("--config", str(path))
    assert res.returncode == 2
    assert "error: cannot open spool" in res.stderr
    assert "Traceback" not in res.stderr


def test_default_collector_address_is_the_collectors_default_listen_port(tmp_path):
    from agents.config import parse_config

    cfg = parse_config(
        {"agent": {"device_id": "d1", "token": "t"}}, base_dir=tmp_path, known_sources=frozenset()
    )
    assert (cfg.host, cfg.port) == ("127.0.0.1", 7878)


def _pki(tmp_path: Path) -> Path:
    from collector import certs

    d = tmp_path / "pki"
    certs.create_ca(d)
    certs.issue(d, "collector", server=True, hosts=("127.0.0.1",))
    certs.issue(d, "dev-1", server=False)
    return d


def test_tls_enabled_config_loads_its_files(tmp_path):
    d = _pki(tmp_path)
    path = tmp_path / "agent.toml"
    path.write_text(
        "[agent]\ndevice_id='dev-1'\ntoken='t'\n[tls]\nenabled=true\n"
        f"ca_file='{d}/ca.pem'\ncert_file='{d}/dev-1.pem'\nkey_file='{d}/dev-1.key'\n"
        "server_name='collector.example.org'\n"
    )
    cfg = load_config(path)
    assert cfg.tls.enabled and cfg.tls.ca_file == d / "ca.pem"
    assert cfg.tls.server_name == "collector.example.org"


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ("ca_file='{d}/dev-1.key'\n", "[tls], key 'ca_file': cannot load TLS file"),
        (
            "ca_file='{d}/ca.pem'\ncert_file='{d}/dev-1.pem'\nkey_file='{d}/ca.key'\n",
            "[tls], key 'cert_file': cannot load TLS file",
        ),
    ],
)
def test_tls_file_that_does_not_load_is_one_line(tmp_path, tls, message):
    d = _pki(tmp_path)
    path = tmp_path / "agent.toml"
    path.write_text(
        "[agent]\ndevice_id='dev-1'\ntoken='t'\n[tls]\nenabled=true\n" + tls.format(d=d)
    )
    with pytest.raises(AgentConfigError) as info:
        load_config(path)
    assert message in str(info.value) and "\n" not in str(info.value)
