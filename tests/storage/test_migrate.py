"""`telemetry migrate`: everything one backend holds arrives in another, once, and agents'
tokens and resume points keep working. Run for every (source, target) pair of backends the
conformance suite knows (`BACKENDS`), through the real command."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from collector.cli import cli
from collector.ingest.prepare import Ingest
from collector.storage.interface import Filters, Session, Storage
from tests.storage.test_conformance import BACKENDS, Backend, open_backend

T0 = 1_700_000_000 * 10**9
S = 10**9
ING = Ingest.from_kinds()

PAIRS = sorted(itertools.product(BACKENDS, repeat=2))


def _fill(b: Backend) -> dict[str, str]:
    """Devices, streams, readings of several kinds (some settled), dead letters."""
    st = b.storage
    tokens = {}
    for name in ("mig-1", "mig-2"):
        _dev, tokens[name] = st.add_device(name, T0)
    st.revoke_device("mig-2", T0 + S)
    (dev1,) = [d for d in st.list_devices() if d.name == "mig-1"]
    st.open_session(dev1.id, "", T0)
    sess = st.open_session(dev1.id, "spool-a", T0)
    readings: list[object] = []
    for i in range(300):
        ts = T0 + i * S
        readings += [
            ["air", "temperature", ts, 20.0 + i / 8, "C", {"room": "lab"}],
            ["pos", "gps", ts, {"lat": 48.1 + i / 1e4, "lon": 11.5}, None, None],
            ["door", "state", ts, i % 2 == 0, None, None],
            ["log", "event", ts, f"event {i}", None, None],
            ["strokes", "counter", ts, i * 3, None, None],
        ]
    for seq, start in enumerate(range(0, len(readings), 400), start=1):
        batch = ING.prepare(seq, readings[start : start + 400], T0)
        st.store([(Session(dev1.id, "spool-a", sess.epoch), batch)])
    b.settle(T0 + 3 * 3600 * S)  # the older readings into long-term storage
    late = ING.prepare(
        0,
        [
            ["air", "temperature", T0 + 400 * S, 31.5, "C", {"room": "lab"}],
            ["air", "humidity", T0, 104.0, None, None],  # rejected: a dead letter
            ["air", "no_such_kind", T0, 1.0, None, None],
        ],
        T0 + 500 * S,
    )
    st.store([(Session(dev1.id), late)])
    return tokens


def _everything(st: Storage) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    series = st.resolve_series(Filters())
    key = {
        s.id: (s.device, s.sensor, s.field, s.kind, s.unit, tuple(sorted(s.tags.items())))
        for s in series
    }
    rows = sorted(
        (key[sid], ts, type(v).__name__, v) for sid, ts, v in st.read_range(list(key), None, None)
    )
    latest = sorted((key[sid], ts, v) for sid, ts, v in st.latest())
    devices = [
        (r.name, r.token_hash, r.revoked_ns is not None, r.streams) for r in st.export_devices()
    ]
    dead = [
        (d.device, d.received_ns, d.seq, d.letter.index, d.letter.raw, d.letter.code, d.letter.path)
        for d in st.export_dead_letters()
    ]
    return rows, latest, devices, dead  # fmt: skip


@pytest.fixture(params=PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, Backend]]:
    src_kind, dst_kind = request.param
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    with (
        open_backend(src_kind, tmp_path / "src") as src,
        open_backend(dst_kind, tmp_path / "dst") as dst,
    ):
        yield src, dst


def test_migrate_copies_everything_once_and_tokens_still_work(
    pair: tuple[Backend, Backend],
) -> None:
    src, dst = pair
    tokens = _fill(src)
    want = _everything(src.storage)
    rows, latest, devices, dead = want
    assert len(rows) == 300 * 6 + 1 and len(dead) == 2  # gps is two series (lat, lon)
    assert len(latest) == 6 and len(devices) == 2

    run = CliRunner().invoke(cli, ["migrate", "--from", src.db, "--to", dst.db, "--quiet"])
    assert run.exit_code == 0, run.output
    assert run.output.startswith("migrated 2 devices, 6 series, 1801 readings (0 already there)")
    assert _everything(dst.storage) == want

    # The agent's token works on the target, the revoked device stays refused, and each
    # stream resumes where it was.
    auth = dst.storage.authenticate("mig-1", tokens["mig-1"], T0)
    assert auth.device is not None
    assert dst.storage.authenticate("mig-2", tokens["mig-2"], T0).device is None
    assert dst.storage.open_session(auth.device.id, "spool-a", T0).last_seq == 4  # 1,500 / 400

    again = CliRunner().invoke(cli, ["migrate", "--from", src.db, "--to", dst.db, "--quiet"])
    assert again.exit_code == 0, again.output
    assert "0 readings (1801 already there), 0 dead letters" in again.output
    assert _everything(dst.storage) == want


def test_migrate_refuses_a_target_device_with_another_token(pair: tuple[Backend, Backend]) -> None:
    src, dst = pair
    src.storage.add_device("clash", T0)
    dst.storage.add_device("clash", T0)
    run = CliRunner().invoke(cli, ["migrate", "--from", src.db, "--to", dst.db])
    assert run.exit_code == 2
    assert "device 'clash' exists here with another token" in run.output


def test_migrate_names_a_missing_source(tmp_path: Path) -> None:
    run = CliRunner().invoke(
        cli, ["migrate", "--from", str(tmp_path / "nope.db"), "--to", str(tmp_path / "x.db")]
    )
    assert run.exit_code == 2
    assert "cannot open --from" in run.output and "nope.db" in run.output
