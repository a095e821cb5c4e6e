"""Measure the device agent's footprint: RSS and CPU with 10 inputs at 1 Hz.

    .venv/bin/python bench/agent_footprint.py [--duration 60] [--fake]

Starts a collector (`python -m collector collector` on 127.0.0.1 port 0 with a fresh
database; `--fake` uses the test suite's fake collector instead), registers a device, then
runs `python -m agents` with 10 inputs at 1 Hz (6 simulated, 2 file, 1 system, 1 command)
for `--duration` seconds after a warm-up. It samples the agent process with psutil every
second and prints RSS (min/mean/max), USS at the end, CPU % of one core over the measured
window (the agent alone; the command input's child processes reported separately), and the
RSS of the interpreter with growing import sets, so the baseline is visible.

Targets (issue 4): <= 25 MB RSS, <= 0.5 % CPU.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
MB = 1024 * 1024

_NO_SSL = "import sys; sys.modules['ssl'] = None\n"
IMPORT_SETS = {
    "bare interpreter": "pass",
    "asyncio (which imports ssl)": "import asyncio",
    "asyncio, ssl blocked (the CLI with TLS off)": _NO_SSL + "import asyncio",
    "  + sqlite3, msgpack": _NO_SSL + "import asyncio, sqlite3, msgpack",
    "  + agents runtime (runner, transport, spool, sources)": _NO_SSL
    + "import agents.runner\nfrom agents.sources import load_builtins\nload_builtins()",
    "  + click, agents.cli": _NO_SSL + "import agents.runner, agents.cli",
    "  + psutil (system source)": _NO_SSL + "import agents.runner, agents.cli, psutil",
}


def import_rss_mb(code: str) -> float:
    """VmRSS of a fresh interpreter after running `code` (Linux /proc)."""
    probe = f"{code}\nprint(open('/proc/self/status').read())"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, check=True
    ).stdout
    m = re.search(r"VmRSS:\s+(\d+) kB", out)
    assert m, out
    return int(m.group(1)) / 1024


@contextlib.contextmanager
def real_collector(tmp: Path) -> Iterator[tuple[int, str]]:
    db = tmp / "collector.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector",
            "collector",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--db",
            str(db),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert proc.stderr is not None
    port = 0
    deadline = time.monotonic() + 30
    for line in proc.stderr:
        m = re.search(r"listening ingest=[\d.]+:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
        if time.monotonic() > deadline:
            break
    if not port:
        proc.kill()
        raise RuntimeError("the collector did not start")
    drain = threading.Thread(target=lambda: [None for _ in proc.stderr or ()], daemon=True)
    drain.start()
    token = subprocess.run(
        [sys.executable, "-m", "collector", "devices", "add", "bench-1", "--db", str(db)],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    ).stdout.split()[0]
    try:
        yield port, token
    finally:
        proc.terminate()
        proc.wait(15)


@contextlib.contextmanager
def fake_collector() -> Iterator[tuple[int, str]]:
    from tests.agents.fake_collector import FakeCollector, threaded

    with threaded(FakeCollector(token="bench")) as fake:
        yield fake.port, "bench"


def agent_config(tmp: Path, port: int, token: str) -> Path:
    (tmp / "value").write_text("21500\n")
    inputs = []
    kinds = [
        ("temperature", "C"),
        ("humidity", "%"),
        ("pressure", "hPa"),
        ("voltage", "V"),
        ("gps", None),
        ("counter", None),
    ]
    for i, (kind, unit) in enumerate(kinds):
        unit_line = f'unit = "{unit}"\n' if unit else ""
        inputs.append(
            f'[[inputs.simulated]]\nname = "bench/sim{i}"\nkind = "{kind}"\n{unit_line}'
            f'interval = "1s"\nwaveform = "random_walk"\nseed = {i}\n'
        )
    for i in range(2):
        inputs.append(
            f'[[inputs.file]]\nname = "bench/file{i}"\nkind = "temperature"\nunit = "C"\n'
            f'interval = "1s"\npath = "{tmp / "value"}"\nscale = 0.001\n'
        )
    inputs.append(
        '[[inputs.system]]\nname = "bench/host"\ninterval = "1s"\n'
        'metrics = ["cpu", "memory", "load"]\n'
    )
    inputs.append(
        f'[[inputs.command]]\nname = "bench/cmd"\ninterval = "1s"\n'
        f'command = ["cat", "{tmp / "value"}"]\n'
    )
    path = tmp / "agent.toml"
    path.write_text(
        f'[agent]\ndevice_id = "bench-1"\ntoken = "{token}"\n'
        f'[collector]\naddress = "127.0.0.1:{port}"\n'
        f'[spool]\npath = "{tmp / "spool.db"}"\n' + "".join(inputs)
    )
    return path


def measure(config: Path, duration_s: float, warmup_s: float) -> dict[str, float]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents", "--config", str(config), "--log-level", "WARNING"],
        env=ENV,
    )
    try:
        p = psutil.Process(proc.pid)
        time.sleep(warmup_s)
        t0 = time.monotonic()
        c0 = p.cpu_times()
        rss: list[float] = []
        while time.monotonic() - t0 < duration_s:
            rss.append(p.memory_info().rss / MB)
            time.sleep(1.0)
        c1 = p.cpu_times()
        wall = time.monotonic() - t0
        uss = p.memory_full_info().uss / MB
    finally:
        proc.terminate()
        proc.wait(15)
    own = (c1.user - c0.user) + (c1.system - c0.system)
    children = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    return {
        "rss_min": min(rss),
        "rss_mean": statistics.fmean(rss),
        "rss_max": max(rss),
        "uss_end": uss,
        "cpu_pct": 100 * own / wall,
        "children_cpu_pct": 100 * children / wall,
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    ap.add_argument("--fake", action="store_true", help="use the fake collector")
    args = ap.parse_args()

    print(f"python {sys.version.split()[0]} on {sys.platform}, {os.cpu_count()} cores")
    # An installed agent has its modules' bytecode (pip compiles on install); a checkout run
    # with PYTHONDONTWRITEBYTECODE=1 would compile every module at each start, which left
    # ~4 MB more RSS behind.
    for package in ("agents", "schemas"):
        compileall.compile_dir(ROOT / package, quiet=1)
    print("RSS of a fresh interpreter by imports:")
    for label, code in IMPORT_SETS.items():
        print(f"  {label:55s} {import_rss_mb(code):6.1f} MB")

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cm = fake_collector() if args.fake else real_collector(tmp)
        with cm as (port, token):
            cfg = agent_config(tmp, port, token)
            r = measure(cfg, args.duration, args.warmup)
    target = "fake collector" if args.fake else "real collector"
    print(f"agent, 10 inputs at 1 Hz, {r['wall_s']:.0f} s against the {target}:")
    print(
        f"  RSS  min {r['rss_min']:.1f} MB  mean {r['rss_mean']:.1f} MB  max {r['rss_max']:.1f} MB"
    )
    print(f"  USS  {r['uss_end']:.1f} MB at the end")
    print(f"  CPU  {r['cpu_pct']:.2f} % of one core (agent process)")
    print(f"       {r['children_cpu_pct']:.2f} % in the command input's child processes")


if __name__ == "__main__":
    main()
