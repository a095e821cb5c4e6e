"""collector.config: defaults < file < TELEMETRY_* environment < flags, one error per bad
setting naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.config import Config, load_config
from collector.errors import ConfigError


def test_defaults() -> None:
    cfg = load_config(env={})
    assert cfg == Config()
    assert cfg.listen_addr == ("127.0.0.1", 7878) and cfg.http_addr == ("127.0.0.1", 7879)
    assert cfg.db == "./telemetry.db" and cfg.synchronous == "FULL"


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        'listen = "0.0.0.0:1000"\nhttp = "off"\ndb = "file.db"\nsynchronous = "normal"\n'
        "allow_unknown_devices = true\n[limits]\nmax_connections = 5\nheartbeat_ms = 1000\n"
    )
    env = {"TELEMETRY_DB": "env.db", "TELEMETRY_MAX_CONNECTIONS": "6", "TELEMETRY_X": "ignored"}
    cfg = load_config(str(f), env=env, overrides={"db": "flag.db", "listen": None})
    assert cfg.listen_addr == ("0.0.0.0", 1000)
    assert cfg.http_addr is None
    assert cfg.db == "flag.db"
    assert cfg.synchronous == "NORMAL"
    assert cfg.allow_unknown_devices is True
    assert cfg.limits.max_connections == 6 and cfg.limits.heartbeat_ms == 1000
    assert load_config(str(f), env=env).db == "env.db"


@pytest.mark.parametrize(
    ("text", "env", "flags", "needle"),
    [
        ("colour = 1\n", {}, {}, "setting 'colour'"),
        ("[limits]\nmax_connections = 0\n", {}, {}, "setting 'limits.max_connections'"),
        ("[limits]\nspeed = 1\n", {}, {}, "setting 'limits.speed'"),
        ("listen = 5\n", {}, {}, "setting 'listen'"),
        ("", {"TELEMETRY_ALLOW_UNKNOWN_DEVICES": "maybe"}, {}, "TELEMETRY_ALLOW_UNKNOWN_DEVICES"),
        ("", {}, {"listen": "localhost"}, "setting 'listen'"),
        ("", {}, {"http": "127.0.0.1:99999"}, "setting 'http'"),
        ("", {}, {"synchronous": "SOMETIMES"}, "setting 'synchronous'"),
        ("", {}, {"log_level": "LOUD"}, "setting 'log_level'"),
        ("", {}, {"kinds": "/no/such/kinds.toml"}, "setting 'kinds'"),
        ("", {}, {"idle_timeout_s": 1.0, "heartbeat_ms": 5000}, "idle_timeout_s"),
        ("not toml [", {}, {}, "not valid TOML"),
        ("", {}, {"tls_cert": "c.pem"}, "setting 'tls_key'"),
        ("", {}, {"tls_client_ca": "ca.pem"}, "setting 'tls_client_ca'"),
        ("[limits]\nmax_readings_per_s_per_device = -1\n", {}, {}, "non-negative"),
        ("", {"TELEMETRY_MAX_CONNECTIONS_PER_IP": "0"}, {}, "TELEMETRY_MAX_CONNECTIONS_PER_IP"),
        ("", {}, {"max_frame_bytes": 100}, "setting 'limits.max_frame_bytes'"),
    ],
)
def test_bad_settings_name_the_setting(
    tmp_path: Path, text: str, env: dict[str, str], flags: dict[str, object], needle: str
) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(f), env=env, overrides=flags)
    assert needle in info.value.format_message()
    assert info.value.exit_code == 2


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "nope.toml"), env={})


def test_tls_and_limit_settings_from_file_env_and_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        'tls_cert = "file.pem"\ntls_key = "file.key"\n'
        "[limits]\nmax_connections_per_ip = 7\nmax_readings_per_s_per_device = 0\n"
    )
    cfg = load_config(str(f), env={})
    assert (cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca, cfg.tls_mode) == (
        "file.pem",
        "file.key",
        None,
        "on",
    )
    assert cfg.limits.max_connections_per_ip == 7
    assert cfg.limits.max_readings_per_s_per_device == 0
    env = {"TELEMETRY_TLS_CLIENT_CA": "ca.pem", "TELEMETRY_MAX_READINGS_PER_S_PER_DEVICE": "50"}
    cfg = load_config(str(f), env=env, overrides={"tls_cert": "flag.pem"})
    assert (cfg.tls_cert, cfg.tls_client_ca, cfg.tls_mode) == ("flag.pem", "ca.pem", "mutual")
    assert cfg.limits.max_readings_per_s_per_device == 50
    assert Config().tls_mode == "off"
    assert Config().limits.max_connections_per_ip == 1000


@pytest.mark.parametrize(
    ("text", "ns"),
    [("30d", 30 * 86_400 * 10**9), ("1.5h", 5_400 * 10**9), ("2w", 14 * 86_400 * 10**9)],
)
def test_retention_takes_the_query_options_durations(text: str, ns: int) -> None:
    assert load_config(None, env={}, overrides={"retention": text}).retention_ns == ns


@pytest.mark.parametrize("text", ["0s", "30", "thirty days", "-1d"])
def test_bad_retention_is_one_clear_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"setting 'retention': expected a positive duration"):
        load_config(None, env={}, overrides={"retention": text})
