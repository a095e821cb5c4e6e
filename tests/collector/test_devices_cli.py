"""`telemetry devices add|list|revoke` through click's CliRunner on a real database file."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from click.testing import CliRunner

from collector.cli import cli
from collector.storage.sqlite import devices, store


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_add_prints_token_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    code, out, err = _run("devices", "add", "greenhouse-1", "--db", db, "--create")
    assert code == 0
    token = out.strip()
    assert len(token) >= 40 and "\n" not in token
    assert "shown only once" in err
    conn = store.connect(db, readonly=True)
    (stored,) = conn.execute(f"SELECT token_hash FROM {store.DEVICES}").fetchone()
    conn.close()
    assert stored == devices.hash_token(token) and token not in stored
    code, out, _ = _run("devices", "list", "--db", db, "--format", "json")
    assert token not in out


def test_duplicate_and_bad_names_are_usage_errors(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    assert _run("devices", "add", "d1", "--db", db, "--create")[0] == 0
    code, _, err = _run("devices", "add", "d1", "--db", db)
    assert code == 2 and "already exists" in err
    code, _, err = _run("devices", "add", "bad name", "--db", db)
    assert code == 2 and "invalid device name" in err
    code, _, err = _run("devices", "revoke", "ghost", "--db", db)
    assert code == 2 and "no device named 'ghost'" in err


def test_list_formats_and_revoke(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    for name in ("b-dev", "a-dev"):
        assert _run("devices", "add", name, "--db", db, "--create")[0] == 0
    assert _run("devices", "revoke", "b-dev", "--db", db)[0] == 0
    _, out, _ = _run("devices", "list", "--db", db, "--format", "json")
    rows = json.loads(out)
    assert [r["device"] for r in rows] == ["a-dev", "b-dev"]
    assert rows[0]["revoked"] is None and rows[1]["revoked"] is not None
    _, out, _ = _run("devices", "list", "--db", db, "--format", "jsonl")
    assert [json.loads(line)["device"] for line in out.splitlines()] == ["a-dev", "b-dev"]
    _, out, _ = _run("devices", "list", "--db", db, "--format", "csv")
    assert [r["device"] for r in csv.DictReader(io.StringIO(out))] == ["a-dev", "b-dev"]
    _, out, _ = _run("devices", "list", "--db", db)
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["device", "id", "created"]
    assert lines[1].startswith("a-dev") and lines[2].startswith("b-dev")


def test_every_devices_command_has_help() -> None:
    for sub in ("add", "list", "revoke"):
        code, out, _ = _run("devices", sub, "--help")
        assert code == 0 and "--db" in out
    code, out, _ = _run("collector", "--help")
    assert code == 0 and "--check-config" in out and "--allow-unknown-devices" in out


def test_devices_alone_lists_like_devices_list(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    assert _run("devices", "add", "pump-1", "--db", db, "--create")[0] == 0
    code, out, _ = _run("devices", "--db", db, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["device"] for r in rows] == ["pump-1"]
    assert _run("devices", "list", "--db", db, "--format", "csv")[1] == out


def test_listing_a_missing_database_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "typo.db"
    code, _, err = _run("devices", "list", "--db", str(db))
    assert code == 2
    assert "no database" in err
    assert not db.exists()
