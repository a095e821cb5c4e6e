"""The read and admin commands find the database the collector uses.

Order: `--db`, then TELEMETRY_DB, then the `db` setting of the collector's config file
(`--config FILE`, else TELEMETRY_CONFIG, else /etc/telemetry/collector.toml when present),
then ./telemetry.db. Where the file came from a config file or the environment (and always
for commands that write), one stderr line names it; stdout stays machine-readable.
`devices add` does not create a database unless asked to (`--create`).
Run in-process with click's CliRunner on real SQLite files; the default config path is
pointed at a temporary file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import collector.config
from collector.cli import cli
from collector.storage.sqlite import store

ROOT = Path(__file__).resolve().parents[2]
CLEAN_ENV: dict[str, str | None] = {"TELEMETRY_DB": None, "TELEMETRY_CONFIG": None}


@pytest.fixture(autouse=True)
def no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default config file is one the test controls (absent unless written)."""
    path = tmp_path / "etc" / "collector.toml"
    monkeypatch.setattr(collector.config, "DEFAULT_CONFIG_FILE", str(path))
    monkeypatch.chdir(tmp_path)
    return path


def run(*args: str, **env: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env={**CLEAN_ENV, **env})
    return result.exit_code, result.stdout, result.stderr


def collector_config(tmp: Path, db: Path, name: str = "collector.toml") -> Path:
    path = tmp / name
    path.write_text(f'listen = "0.0.0.0:7878"\ndb = "{db}"\n')
    return path


def devices_in(db: Path) -> list[str]:
    conn = store.connect(db, readonly=True)
    try:
        return [r[0] for r in conn.execute(f"SELECT name FROM {store.DEVICES} ORDER BY name")]
    finally:
        conn.close()


def test_devices_add_will_not_create_a_database_silently(tmp_path: Path) -> None:
    db = tmp_path / "typo.db"
    code, out, err = run("devices", "add", "d1", "--db", str(db))
    assert code == 2 and out == ""
    assert str(db) in err and "--create" in err
    assert not db.exists()
    code, out, err = run("devices", "add", "d1", "--db", str(db), "--create")
    assert code == 0 and len(out.strip()) >= 40
    assert str(db) in err
    assert devices_in(db) == ["d1"]
    code, _, _ = run("devices", "add", "d2", "--db", str(db))  # it exists now
    assert code == 0 and devices_in(db) == ["d1", "d2"]
    other = tmp_path / "other.db"
    code, _, err = run("devices", "revoke", "d1", "--db", str(other))
    assert code == 2 and str(other) in err and "--create" not in err
    assert not other.exists()


def test_config_file_names_the_database_for_admin_and_read_commands(tmp_path: Path) -> None:
    db = tmp_path / "var" / "telemetry.db"
    db.parent.mkdir()
    conf = collector_config(tmp_path, db)
    code, out, err = run("devices", "add", "g-1", "--config", str(conf), "--create")
    assert code == 0, err
    assert str(db) in err and str(conf) in err
    assert devices_in(db) == ["g-1"]
    assert not (tmp_path / "telemetry.db").exists()
    code, out, err = run("devices", "list", "--config", str(conf), "--format", "json")
    assert code == 0, err
    assert [r["device"] for r in json.loads(out)] == ["g-1"]  # stdout is only the data
    assert str(db) in err and str(conf) in err
    for cmd in (["series"], ["query", "--since", "1h"], ["export"], ["rejected"]):
        code, out, err = run(*cmd, "--config", str(conf), "--format", "jsonl")
        assert code == 0, (cmd, err)
        assert out == "", (cmd, out)
        assert str(db) in err, (cmd, err)


def test_environment_variables_and_precedence(tmp_path: Path) -> None:
    dbs = {n: tmp_path / f"{n}.db" for n in ("flag", "env", "conf", "envconf")}
    for name, db in dbs.items():
        assert run("devices", "add", f"in-{name}", "--db", str(db), "--create")[0] == 0
    conf = collector_config(tmp_path, dbs["conf"])
    envconf = collector_config(tmp_path, dbs["envconf"], "other.toml")

    def listed(*args: str, **env: str) -> tuple[list[str], str]:
        code, out, err = run("devices", "list", "--format", "json", *args, **env)
        assert code == 0, err
        return [r["device"] for r in json.loads(out)], err

    assert listed("--db", str(dbs["flag"]), TELEMETRY_DB=str(dbs["env"]))[0] == ["in-flag"]
    names, err = listed("--config", str(conf), TELEMETRY_DB=str(dbs["env"]))
    assert names == ["in-env"] and "TELEMETRY_DB" in err  # as for the collector: env > file
    names, err = listed(TELEMETRY_CONFIG=str(envconf))
    assert names == ["in-envconf"] and str(envconf) in err and "TELEMETRY_CONFIG" in err
    assert listed("--config", str(conf), TELEMETRY_CONFIG=str(envconf))[0] == ["in-conf"]


def test_default_search_finds_the_system_config_then_the_working_directory(
    tmp_path: Path, no_system_config: Path
) -> None:
    local = tmp_path / "telemetry.db"
    assert run("devices", "add", "local-1", "--db", str(local), "--create")[0] == 0
    code, out, err = run("devices", "list", "--format", "json")
    assert code == 0 and [r["device"] for r in json.loads(out)] == ["local-1"]

    served = tmp_path / "served.db"
    assert run("devices", "add", "served-1", "--db", str(served), "--create")[0] == 0
    no_system_config.parent.mkdir()
    no_system_config.write_text(f'db = "{served}"\n')
    code, out, err = run("devices", "list", "--format", "json")
    assert code == 0 and [r["device"] for r in json.loads(out)] == ["served-1"]
    assert str(served) in err and str(no_system_config) in err


def test_a_missing_database_says_where_it_looked(tmp_path: Path) -> None:
    code, out, err = run("series")
    assert code == 2 and out == ""
    assert "telemetry.db" in err and "--db" in err and "--config" in err
    conf = collector_config(tmp_path, tmp_path / "nowhere" / "t.db")
    code, _, err = run("query", "--config", str(conf))
    assert code == 2 and str(tmp_path / "nowhere" / "t.db") in err and str(conf) in err


def test_a_config_file_that_cannot_be_read_is_one_error(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "collector", "series", "--config", str(tmp_path / "absent.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k not in CLEAN_ENV},
    )
    assert res.returncode == 2 and res.stdout == ""
    (line,) = res.stderr.strip().splitlines()
    assert "error:" in line and "absent.toml" in line and "cannot read" in line


def test_every_read_and_admin_command_documents_config_in_help() -> None:
    for cmd in (
        ["devices"],
        ["devices", "add"],
        ["devices", "list"],
        ["devices", "revoke"],
        ["query"],
        ["series"],
        ["tail"],
        ["export"],
        ["rejected"],
    ):
        code, out, _ = run(*cmd, "--help")
        assert code == 0, cmd
        assert "--config" in out and "TELEMETRY_DB" in out, cmd
    code, out, _ = run("devices", "add", "--help")
    assert "--create" in out


def _readme_setup() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## A small real setup", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    cmds = []
    for line in block.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("telemetry "):
            cmds.append(line.split()[1:])
    return cmds


def test_readme_small_real_setup_registers_the_device_where_the_collector_stores(
    tmp_path: Path,
) -> None:
    """The README's commands, with /etc/telemetry and /var/lib/telemetry moved to tmp."""
    var = tmp_path / "var"
    var.mkdir()
    example = (ROOT / "deploy" / "collector.example.toml").read_text()
    conf = tmp_path / "collector.toml"
    conf.write_text(example.replace("/var/lib/telemetry", str(var)))
    cmds = _readme_setup()
    names = [c[0] for c in cmds]
    assert names.index("devices") < names.index("query")

    def fix(args: list[str]) -> list[str]:
        return [str(conf) if a == "/etc/telemetry/collector.toml" else a for a in args]

    # The system config location is where the README's commands look by default.
    env = {**CLEAN_ENV, "TELEMETRY_CONFIG": str(conf)}
    for args in cmds:
        args = fix(args)
        if args[0] == "collector" and "--check-config" not in args:
            continue  # the daemon itself: tests/collector/test_daemon.py
        if args[0] == "agent":
            continue  # needs a device config: tests/e2e
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 0, (args, result.stderr)
    assert devices_in(var / "telemetry.db") == ["greenhouse-1"]
    res = subprocess.run(
        [sys.executable, "-m", "collector", "collector", "--config", str(conf), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k not in CLEAN_ENV},
    )
    assert res.returncode == 0 and str(var / "telemetry.db") in res.stdout
