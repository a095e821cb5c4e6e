"""`telemetry agent --check-config`: what would fail at start, one line per problem.

A `command` input whose program is missing and a misspelled sensor kind both pass config
parsing and fail only once the agent runs (every sample an error, every reading rejected),
so the check looks for them. A good config prints a summary a person reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAD = "[agent]\ndevice_id = 'd1'\ntoken = 't'\n[collector]\naddress = '127.0.0.1:7878'\n"


def _check(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents", "--config", str(path), "--check-config", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def _write(tmp: Path, body: str) -> Path:
    path = tmp / "agent.toml"
    path.write_text(HEAD + f"[spool]\npath = '{tmp / 'spool.db'}'\n" + body)
    return path


def test_command_input_whose_program_is_missing_is_an_error(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "[[inputs.command]]\nname = 'ups'\nkind = 'voltage'\ncommand = ['no-such-program-x1']\n",
    )
    res = _check(path)
    assert res.returncode == 2, res.stdout
    (line,) = res.stderr.strip().splitlines()
    assert "error:" in line and "inputs.command[0]" in line and "'command'" in line
    assert "no-such-program-x1" in line and "not found" in line
    assert res.stdout == ""


def test_command_input_with_a_program_that_is_not_executable_is_an_error(tmp_path: Path) -> None:
    script = tmp_path / "read.sh"
    script.write_text("#!/bin/sh\necho 1\n")
    path = _write(tmp_path, f"[[inputs.command]]\nname = 'x'\ncommand = ['{script}']\n")
    res = _check(path)
    assert res.returncode == 2
    assert "not executable" in res.stderr
    script.chmod(0o755)
    assert _check(path).returncode == 0


def test_misspelled_kind_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path = _write(tmp_path, "[[inputs.simulated]]\nname = 'air'\nkind = 'temprature'\n")
    res = _check(path)
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert "inputs.simulated[0]" in line and "'kind'" in line and "'temprature'" in line
    assert "did you mean 'temperature'" in line
    assert "--kinds" in line  # the hint for kinds defined in the collector's kinds file


def test_user_defined_kind_passes_with_the_collectors_kinds_file(tmp_path: Path) -> None:
    kinds = tmp_path / "kinds.toml"
    kinds.write_text('[kinds.soil_moisture]\ntype = "number"\nunits = ["%"]\n')
    path = _write(tmp_path, "[[inputs.simulated]]\nname = 'soil'\nkind = 'soil_moisture'\n")
    assert _check(path).returncode == 2
    res = _check(path, "--kinds", str(kinds))
    assert res.returncode == 0, res.stderr


def test_every_problem_is_one_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "[[inputs.simulated]]\nname = 'a'\nkind = 'voltag'\n"
        "[[inputs.command]]\nname = 'b'\ncommand = ['/nonexistent/bin/reader']\n",
    )
    res = _check(path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2, res.stderr
    assert "inputs.simulated[0]" in lines[0] and "inputs.command[0]" in lines[1]


def test_a_good_config_prints_a_summary_a_person_reads(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "[[inputs.simulated]]\nnames = ['air', 'soil']\nkind = 'temperature'\ninterval = '5s'\n"
        f"[[inputs.command]]\nname = 'up'\nkind = 'gauge'\ncommand = ['{sys.executable}', '-V']\n",
    )
    res = _check(path)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "AgentConfig(" not in out and "InputConfig(" not in out
    assert f"{path}: ok" in out
    assert "d1" in out and "127.0.0.1:7878" in out and str(tmp_path / "spool.db") in out
    assert "inputs.simulated[0]" in out and "air, soil" in out and "every 5s" in out
    assert "inputs.command[0]" in out and sys.executable in out
    assert "'t'" not in out and "token = " not in out  # the token is not shown
