"""TLS for the ingest listener: the server context and the device identity in a client cert.

Standard library `ssl` only. With `client_ca` set the collector requires a client
certificate signed by that CA (mutual TLS), and `cert_device_ids` gives the identities it
names (Common Name and DNS SANs); the server then insists that HELLO's device id is one of
them, so a stolen token alone is not enough and one device's certificate cannot speak for
another.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Final

# TLS 1.2 is the oldest version still considered safe; embedded TLS stacks (mbedTLS,
# wolfSSL) on small devices all speak it.
MIN_TLS_VERSION: Final = ssl.TLSVersion.TLSv1_2


class TlsFileError(Exception):
    """A certificate, key or CA file could not be loaded; `which` names the file's role."""

    def __init__(self, which: str, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.which = which
        self.path = path
        self.detail = detail


def _detail(exc: OSError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or exc)


def server_context(
    cert_file: str | Path, key_file: str | Path, client_ca: str | Path | None = None
) -> ssl.SSLContext:
    """Build the listener's context; `client_ca` turns on mutual TLS.

    Raises TlsFileError ("cert", "key" or "client_ca") when a file is missing, unreadable,
    not PEM, or the key does not match the certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_TLS_VERSION
    for which, path in (("cert", cert_file), ("key", key_file)):
        if not Path(path).is_file():
            raise TlsFileError(which, str(path), "no such file")
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except OSError as exc:  # ssl.SSLError is an OSError
        raise TlsFileError("cert", f"{cert_file} / {key_file}", _detail(exc)) from None
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(str(client_ca))
        except OSError as exc:
            raise TlsFileError("client_ca", str(client_ca), _detail(exc)) from None
    return ctx


class SwappableContext:
    """The listener's TLS context, whose certificates can be replaced for new connections.

    The listening socket keeps the context it was created with; its `sni_callback` (called
    by OpenSSL for every ClientHello, with or without a server name) moves each new
    connection to the current context before the certificate is chosen, so `replace` takes
    effect at the next handshake while open connections keep theirs. The verify mode must
    stay the same (on vs mutual decides how sessions check HELLO), so only certificates,
    key and client CA change.
    """

    def __init__(self, listener: ssl.SSLContext) -> None:
        self.listener = listener
        self.current = listener
        listener.sni_callback = self._pick

    def replace(self, ctx: ssl.SSLContext) -> None:
        """Use `ctx` for connections from now on (same verify mode as the listener's)."""
        if ctx.verify_mode != self.listener.verify_mode:
            raise ValueError("the TLS verify mode cannot change without a restart")
        self.current = ctx

    def _pick(self, sslobj: ssl.SSLObject, _server_name: str | None, _ctx: object) -> None:
        if self.current is not self.listener:
            sslobj.context = self.current


def files_digest(paths: Iterable[str | Path | None]) -> str:
    """SHA-256 over the named files' bytes (None: empty; a missing file: a marker),
    so a reload can tell whether certificate files changed under the same names."""
    h = hashlib.sha256()
    for p in paths:
        data = b""
        if p is not None:
            try:
                data = Path(p).read_bytes()
            except OSError:
                data = b"\0missing"
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def cert_device_ids(peercert: object) -> set[str]:
    """Identities named by a verified peer certificate (`SSLObject.getpeercert()`)."""
    ids: set[str] = set()
    if not isinstance(peercert, dict):
        return ids
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                ids.add(str(value))
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "DNS":
            ids.add(str(value))
    return ids
