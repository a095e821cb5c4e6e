"""The example configs in deploy/ describe the software as it is and fit the systemd units.

Each example is loaded as it ships (only the token file and the database path swapped for
temporary ones): TLS is a shipped feature, so the agent example must not call it future
work, and `enabled = true` with real certificate files must load.
"""

from __future__ import annotations

import re
from pathlib import Path

from agents.config import load_config
from agents.runner import build_inputs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "deploy").glob("**/*.toml"))
STALE = re.compile(r"later release|not (yet )?(implemented|supported)|coming soon|planned", re.I)


def _state_directory(unit: str) -> Path:
    text = (ROOT / "deploy" / "systemd" / unit).read_text()
    m = re.search(r"^StateDirectory=(\S+)$", text, re.M)
    assert m is not None, unit
    return Path("/var/lib") / m.group(1)


def test_no_example_calls_a_shipped_feature_future_work() -> None:
    assert EXAMPLES
    for path in EXAMPLES:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not STALE.search(line), f"{path.relative_to(ROOT)}:{n}: {line.strip()}"


def test_agent_example_spool_is_in_the_agent_units_state_directory(tmp_path: Path) -> None:
    text = (ROOT / "deploy" / "agent.example.toml").read_text()
    path = tmp_path / "agent.toml"
    path.write_text(text.replace('token_file = "/etc/telemetry/agent.token"', 'token = "x"'))
    cfg = load_config(path)
    state = _state_directory("telemetry-agent.service")
    assert cfg.spool_path.parent == state, (
        f"the agent's spool {cfg.spool_path} is outside {state}, the only directory the "
        "agent's systemd unit may write"
    )


def test_agent_example_with_tls_enabled_checks(tmp_path: Path) -> None:
    from collector import certs

    pki = tmp_path / "pki"
    certs.create_ca(pki)
    certs.issue(pki, "greenhouse-1", server=False)
    text = (ROOT / "deploy" / "agent.example.toml").read_text()
    text = text.replace('token_file = "/etc/telemetry/agent.token"', 'token = "x"')
    text = re.sub(r"(?m)^enabled = false.*$", "enabled = true", text)
    for key, name in (("ca_file", "ca.pem"), ("cert_file", "greenhouse-1.pem"),
                      ("key_file", "greenhouse-1.key")):  # fmt: skip
        text, n = re.subn(rf'(?m)^# {key} = "[^"]*".*$', f'{key} = "{pki / name}"', text)
        assert n == 1, f"the example has no commented {key} line"
    text = re.sub(r'(?m)^path = "/var/lib/[^"]*"', f'path = "{tmp_path / "spool.db"}"', text)
    path = tmp_path / "agent.toml"
    path.write_text(text)
    # load_config loads the TLS files (as --check-config does); the example's command
    # input names a program this machine does not have, so the full check is not run.
    cfg = load_config(path)
    assert cfg.tls.enabled and cfg.tls.cert_file == pki / "greenhouse-1.pem"
    assert len(build_inputs(cfg)) == len(cfg.inputs)
