"""Test helpers: a blocking raw-socket wire client and a collector daemon subprocess.

`WireClient` speaks protocol v1 over a real TCP socket using only `schemas.wire` (not the
agent's transport), so tests control every byte:

    with CollectorProcess(tmp_path / "t.db") as daemon:       # python -m collector collector
        token = daemon.add_device("dev-1")
        with WireClient(*daemon.ingest) as c:
            assert isinstance(c.hello("dev-1", token), wire.Welcome)
            ack = c.batch(1, [["air", "temperature", ts, 21.5, "C", None]])
            c.send_raw(b"\\x00\\x00\\x00\\x01\\xc1")          # anything, byte for byte
            event = c.recv()                                  # next event; PINGs answered

`CollectorProcess` starts the real daemon on 127.0.0.1 port 0 (ingest and HTTP), parses the
bound addresses from its `listening ingest=HOST:PORT http=HOST:PORT` log line, and stops it
with SIGTERM on exit. For TLS give `WireClient` an `ssl_context` (e.g.
`agents.tls.client_context(ca, cert, key)`); the handshake runs in the constructor.
Import: `from tests.collector.wireclient import WireClient`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from schemas import wire

LISTENING_RE = re.compile(r"listening ingest=(\S+):(\d+) http=(\S+)")


class WireClient:
    """One agent-side connection, driven synchronously with deadlines."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        source_address: tuple[str, int] | None = None,
    ) -> None:
        sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=source_address
        )
        if ssl_context is not None:
            try:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.timeout = timeout
        self.proto = wire.Connection(wire.Role.AGENT)

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, event: wire.Event) -> None:
        """Send an event through the agent-side state machine."""
        self.sock.sendall(self.proto.send(event))

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are, bypassing the state machine."""
        self.sock.sendall(data)

    def recv(
        self, timeout: float | None = None, *, answer_pings: bool = True
    ) -> wire.Event | wire.ConnectionClosed:
        """The next event from the collector; PINGs are answered and skipped by default.

        Raises TimeoutError when nothing arrives in time, RemoteProtocolError for bad frames.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            event = self.proto.next_event()
            if isinstance(event, wire.Ping) and answer_pings:
                self.send(wire.Pong(event.nonce))
                continue
            if event is not wire.NEED_DATA:
                return event  # type: ignore[return-value]  # narrowed: not NEED_DATA
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no event from the collector in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no event from the collector in time") from None
            except ConnectionResetError:
                data = b""
            self.proto.receive_data(data)

    def hello(self, device: str, token: str, **kw: object) -> wire.Event | wire.ConnectionClosed:
        """Send HELLO; returns WELCOME, or the ERROR that refused it."""
        self.send(wire.Hello(device_id=device, token=token, **kw))  # type: ignore[arg-type]
        return self.recv()

    def batch(
        self, seq: int, readings: list[object], timeout: float | None = None
    ) -> wire.Event | wire.ConnectionClosed:
        """Send one BATCH and return the collector's answer (ACK, RETRY or ERROR)."""
        self.send(wire.Batch(seq, readings))
        return self.recv(timeout)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the collector closes the socket (after any frames it still sends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return False
            except (ConnectionResetError, ssl.SSLError):
                return True  # a TLS alert (e.g. a refused client certificate) ends it too
            if not data:
                return True
        return False


class CollectorProcess:
    """`python -m collector collector` as a subprocess on 127.0.0.1 port 0."""

    def __init__(self, db: Path | str, *args: str, env: dict[str, str] | None = None) -> None:
        # A path to an SQLite file, or a postgresql:// URL: `db_arg` is what `--db` gets
        # (a URL as given: Path would fold its "//"); `db` the file, for SQLite's helpers.
        self.db_arg = str(db)
        self.db = Path(db)
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.ingest: tuple[str, int] = ("", 0)
        self.http: tuple[str, int] | None = None
        self.lines: list[str] = []
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> CollectorProcess:
        cmd = [
            sys.executable,
            "-m",
            "collector",
            "collector",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--db",
            self.db_arg,
            *self.args,
        ]
        self._listening.clear()
        self.lines = []
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=self.env
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not self._listening.wait(timeout):
            self.kill()
            raise RuntimeError("collector did not start:\n" + "".join(self.lines))
        return self

    def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = LISTENING_RE.search(line)
            if m:
                self.ingest = (m.group(1), int(m.group(2)))
                h = m.group(3)
                if h != "off":
                    host, _, port = h.rpartition(":")
                    self.http = (host, int(port))
                self._listening.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def add_device(self, name: str) -> str:
        """Register a device with `telemetry devices add`; returns its token."""
        out = subprocess.run(
            [sys.executable, "-m", "collector", "devices", "add", name, "--db", self.db_arg],
            capture_output=True,
            text=True,
            check=True,
            env=self.env,
        )
        return out.stdout.strip()

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self._close_log(timeout)
        return rc

    def _close_log(self, timeout: float) -> None:
        if self._reader is not None:
            self._reader.join(timeout)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_log(10)

    def __enter__(self) -> CollectorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.kill()
