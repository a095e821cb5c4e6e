"""Certificates from `telemetry certs` work for real TLS handshakes on loopback."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents.tls import client_context
from collector import certs
from collector.cli import cli
from collector.tls import cert_device_ids, server_context


def _pki(tmp_path: Path, name: str = "pki") -> Path:
    d = tmp_path / name
    runner = CliRunner()
    for args in (
        ["certs", "ca", "--dir", str(d)],
        ["certs", "collector", "--dir", str(d), "--host", "127.0.0.1", "--host", "localhost"],
        ["certs", "device", "dev-1", "--dir", str(d)],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    return d


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> object:
    seen: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if not seen.done():
            seen.set_result(w.get_extra_info("peercert"))
        w.write(b"ok")
        await w.drain()
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(10):
            r, w = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1"
            )
            data = await r.read()
            w.close()
            if data != b"ok":
                # TLS 1.3: the client finishes its side of the handshake before the server
                # checks the client certificate; a refused client then just sees EOF.
                raise ConnectionError(f"server closed the connection (read {data!r})")
            return await seen
    finally:
        server.close()
        await server.wait_closed()


def test_mutual_tls_names_the_device(tmp_path: Path) -> None:
    d = _pki(tmp_path)
    sctx = server_context(d / "collector.pem", d / "collector.key", client_ca=d / "ca.pem")
    cctx = client_context(d / "ca.pem", d / "dev-1.pem", d / "dev-1.key")
    peer = asyncio.run(_handshake(sctx, cctx))
    assert cert_device_ids(peer) == {"dev-1"}


def test_client_rejects_a_collector_from_another_ca(tmp_path: Path) -> None:
    good, other = _pki(tmp_path, "good"), _pki(tmp_path, "other")
    sctx = server_context(other / "collector.pem", other / "collector.key")
    cctx = client_context(good / "ca.pem")
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(_handshake(sctx, cctx))


def test_collector_rejects_a_device_cert_from_another_ca(tmp_path: Path) -> None:
    good, other = _pki(tmp_path, "good"), _pki(tmp_path, "other")
    sctx = server_context(good / "collector.pem", good / "collector.key", client_ca=good / "ca.pem")
    cctx = client_context(good / "ca.pem", other / "dev-1.pem", other / "dev-1.key")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        asyncio.run(_handshake(sctx, cctx))


def test_ca_is_never_overwritten_and_keys_are_private(tmp_path: Path) -> None:
    d = _pki(tmp_path)
    assert (d / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (d / "dev-1.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(certs.CertError, match="already exists"):
        certs.create_ca(d)


def test_device_cert_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(certs.CertError, match="no CA here"):
        certs.issue(tmp_path / "empty", "dev-1", server=False)
