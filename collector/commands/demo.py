"""`telemetry demo`: a collector and a few simulated agents on this machine, shown live.

Runs the real programs as child processes — `telemetry collector` on a local SQLite file and
one `telemetry agent` per simulated device — registers the devices, prints the address of
the collector's live dashboard first, then readings as they are committed. One device
deliberately sends some invalid readings so the dead-letter table has something to show.
Ctrl-C (or the end of `--duration`) stops the agents, then the collector, and exits 0.

This module starts and stops processes and reads the database read-only; it never writes
readings itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Final

import click

from collector.errors import ConfigError

# The demo runs a collector: without the collector extra (pydantic, aiohttp, ...) it is not
# offered. collector.cli lists a command only when its module imports, so name one here.
from collector.ingest import prepare as _needs_the_collector_extra  # noqa: F401
from collector.storage.factory import open_storage
from collector.storage.interface import Filters, Storage

# How long the collector may take to migrate and start listening.
COLLECTOR_START_TIMEOUT_S: Final = 30.0
# How long children get to stop after SIGTERM before SIGKILL.
STOP_TIMEOUT_S: Final = 10.0
# At most this many readings printed per refresh, so the screen stays readable.
LINES_PER_REFRESH: Final = 12
REFRESH_S: Final = 1.0
_LISTENING_RE: Final = re.compile(r"listening ingest=(\S+):(\d+) http=(\S+):(\d+)")


@dataclass(frozen=True)
class _Profile:
    """One simulated device: a name and its [[inputs.simulated]] tables."""

    name: str
    inputs: str


_PROFILES: Final = (
    _Profile(
        "greenhouse",
        """
[[inputs.simulated]]
names = ["greenhouse/air-temp", "greenhouse/soil-temp"]
kind = "temperature"
unit = "C"
interval = "1s"
waveform = "sine"
base = 21.0
amplitude = 4.0
period = "2m"
noise = 0.05
seed = {seed}
tags = {{ zone = "north" }}

[[inputs.simulated]]
name = "greenhouse/humidity"
kind = "humidity"
interval = "1s"
waveform = "random_walk"
base = 60.0
amplitude = 0.5
seed = {seed}
""",
    ),
    _Profile(
        "power-meter",
        """
[[inputs.simulated]]
name = "mains/voltage"
kind = "voltage"
unit = "V"
interval = "1s"
waveform = "sine"
base = 230.0
amplitude = 3.0
period = "30s"
seed = {seed}

[[inputs.simulated]]
name = "mains/power"
kind = "power"
unit = "W"
interval = "1s"
waveform = "random_walk"
base = 800.0
amplitude = 20.0
seed = {seed}

[[inputs.simulated]]
name = "mains/pulses"
kind = "counter"
interval = "2s"
seed = {seed}
""",
    ),
    _Profile(
        "tracker",
        """
[[inputs.simulated]]
name = "truck/position"
kind = "gps"
interval = "1s"
lat = 52.37
lon = 4.89
seed = {seed}

[[inputs.simulated]]
name = "truck/cargo-temp"
kind = "temperature"
unit = "C"
interval = "1s"
waveform = "random_walk"
base = 4.0
amplitude = 0.2
seed = {seed}
# Every 5th sample is invalid for its kind: watch `telemetry rejected`.
invalid_every = 5
""",
    ),
)


def _agent_config(
    profile: _Profile, device: str, token: str, address: str, spool: Path, seed: int
) -> str:
    return (
        f'[agent]\ndevice_id = "{device}"\ntoken = "{token}"\n\n'
        f'[collector]\naddress = "{address}"\nbackoff_initial_ms = 200\nbackoff_max_ms = 2000\n\n'
        f"[batch]\nmax_readings = 200\nmax_delay_ms = 500\n\n"
        f'[spool]\npath = "{spool}"\n' + profile.inputs.format(seed=seed)
    )


def _spawn(args: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        # Own process group: Ctrl-C reaches only the demo, which then stops children in order.
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _start_collector(db: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    log_path = workdir / "collector.log"
    log = log_path.open("wb")
    proc = _spawn(
        [
            "-m",
            "collector",
            "collector",
            "--db",
            str(db),
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--log-level",
            "INFO",
        ],
        log,
    )
    deadline = time.monotonic() + COLLECTOR_START_TIMEOUT_S
    while time.monotonic() < deadline:
        m = _LISTENING_RE.search(log_path.read_text(errors="replace"))
        if m:
            return proc, f"{m.group(1)}:{m.group(2)}", f"{m.group(3)}:{m.group(4)}"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    _stop(proc)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
    raise click.ClickException("the collector did not start: " + (" | ".join(tail) or "no output"))


def _register(db: Path, workdir: Path, names: list[str]) -> dict[str, str]:
    """Register each demo device (once per database); tokens are kept in `workdir`."""
    storage = open_storage(str(db))
    tokens: dict[str, str] = {}
    try:
        known = {d.name for d in storage.list_devices()}
        for name in names:
            token_file = workdir / f"{name}.token"
            if name in known and token_file.exists():
                tokens[name] = token_file.read_text().strip()
                continue
            if name in known:
                # Known device whose token was lost: the demo can still use a fresh name.
                name = f"{name}-{os.getpid()}"
            _, token = storage.add_device(name, time.time_ns())
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
            tokens[name] = token
    finally:
        storage.close()
    return tokens


def _fmt_value(value: object, unit: str) -> str:
    if isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".")
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def _totals(storage: Storage) -> tuple[int, int]:
    """(readings stored, readings rejected) so far."""
    total = sum(s.count for s in storage.resolve_series(Filters()))
    return total, len(storage.rejected())


def _follow(db: Path) -> Iterator[tuple[list[dict[str, object]], int, int]]:
    """Yield (readings committed since the last refresh, stored, rejected) per refresh."""
    storage = open_storage(str(db), readonly=True)
    try:
        cursor = storage.tail(Filters())
        try:
            while True:
                yield cursor.poll(), *_totals(storage)
        finally:
            cursor.close()
    finally:
        storage.close()


@click.command("demo")
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    default=None,
    metavar="SECONDS",
    help="Stop after this many seconds (default: run until Ctrl-C).",
)
@click.option(
    "--agents",
    "n_agents",
    type=click.IntRange(1, 30),
    default=3,
    show_default=True,
    help="Number of simulated devices, each a separate agent process.",
)
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("telemetry.db"),
    show_default=True,
    help="SQLite file the collector writes to.",
)
@click.option("--quiet", is_flag=True, help="Print only the summary lines, not each reading.")
def demo(duration: float | None, n_agents: int, db: Path, quiet: bool) -> None:
    """Run a collector and simulated agents locally and show readings arriving live.

    The first line is the address of the live dashboard (open it in a browser). The
    collector listens on 127.0.0.1 (ports chosen at run time, printed at start) and
    writes to --db; each agent is a real `telemetry agent` process with its own on-disk
    spool. Device tokens, spools and logs are kept in `.NAME-demo` beside the database
    (`.telemetry-demo` for telemetry.db), so running the demo again on the same file
    reuses the same devices.
    """
    db = db.resolve()
    if not db.parent.is_dir():
        raise ConfigError(f"--db: folder {db.parent} does not exist")
    # One folder per database: a spool left by a demo on another file must not replay there.
    workdir = db.parent / f".{db.stem}-demo"
    workdir.mkdir(exist_ok=True)
    names = [
        f"{_PROFILES[i % len(_PROFILES)].name}-{i // len(_PROFILES) + 1}" for i in range(n_agents)
    ]
    tokens = _register(db, workdir, names)
    collector, ingest, http = _start_collector(db, workdir)
    # First, so it is on screen to open while the rest scrolls by.
    click.echo(f"dashboard: http://{http}/")
    click.echo(f"collector: ingest {ingest}, HTTP http://{http}, database {db}")
    agents: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        for i, (device, token) in enumerate(tokens.items()):
            profile = _PROFILES[i % len(_PROFILES)]
            cfg = workdir / f"{device}.toml"
            cfg.write_text(
                _agent_config(profile, device, token, ingest, workdir / f"{device}.spool", i + 1)
            )
            log = (workdir / f"{device}.log").open("wb")
            agents.append(_spawn(["-m", "agents", "--config", str(cfg)], log))
            click.echo(f"agent {device}: {profile.name} profile (log {workdir / device}.log)")
        click.echo("readings (Ctrl-C to stop):")
        _show(db, duration, quiet, stop)
    except KeyboardInterrupt:
        click.echo("\nstopping")
    finally:
        signal.signal(signal.SIGTERM, previous)
        for proc in agents:
            _stop(proc)
        rc = _stop(collector)
        if rc not in (0, -signal.SIGTERM):
            click.echo(
                f"collector exited with status {rc}; see {workdir / 'collector.log'}", err=True
            )
    _summary(db, http)


def _show(db: Path, duration: float | None, quiet: bool, stop: threading.Event) -> None:
    deadline = None if duration is None else time.monotonic() + duration
    last_summary = 0.0
    for rows, total, rejected in _follow(db):
        if not quiet:
            for r in rows[-LINES_PER_REFRESH:]:
                ts = r["ts_ns"]
                assert isinstance(ts, int)
                when = datetime.fromtimestamp(ts / 1e9, UTC).strftime("%H:%M:%S.%f")
                name = f"{r['sensor']}.{r['field']}" if r["field"] else str(r["sensor"])
                shown = _fmt_value(r["value"], str(r["unit"]))
                click.echo(f"  {when[:-3]}  {r['device']!s:<14} {name:<26} {shown}")
        now = time.monotonic()
        if now - last_summary >= 5:
            click.echo(f"-- {total} readings stored, {rejected} rejected")
            last_summary = now
        if stop.is_set() or (deadline is not None and now >= deadline):
            return
        stop.wait(REFRESH_S)


def _summary(db: Path, http: str) -> None:
    with contextlib.closing(open_storage(str(db), readonly=True)) as storage:
        total, rejected = _totals(storage)
        n_dev = len(storage.list_devices())
    dbarg = "" if db == Path("telemetry.db").resolve() else f" --db {db}"
    t = _telemetry_command()
    click.echo(
        f"\n{total} readings from {n_dev} device{'' if n_dev == 1 else 's'} stored in {db} "
        f"({rejected} rejected).\n"
        "Look at them with:\n"
        f"  {t} query{dbarg} --since 10m --latest\n"
        f"  {t} query{dbarg} --sensor 'greenhouse/*' --since 10m --every 1m --agg avg\n"
        f"  {t} series{dbarg}\n"
        f"  {t} rejected{dbarg}\n"
        f"While a collector runs, the same over HTTP, e.g. http://{http}/api/v1/latest"
    )


def _telemetry_command() -> str:
    """How to type `telemetry` here: bare when it is on PATH, else its path (e.g. in .venv)."""
    installed = Path(sys.executable).parent / "telemetry"
    on_path = shutil.which("telemetry")
    if on_path is not None and Path(on_path).resolve() == installed.resolve():
        return "telemetry"
    try:
        return str(installed.relative_to(Path.cwd()))
    except ValueError:
        return str(installed)
