"""TLS for the agent's connection: verify the collector, optionally present a device cert.

Standard library `ssl` only, so a device needs nothing beyond Python and msgpack.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final

MIN_TLS_VERSION: Final = ssl.TLSVersion.TLSv1_2


def client_context(
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> ssl.SSLContext:
    """Context that verifies the collector's certificate and host name.

    `ca_file` pins a private CA (the usual case: `telemetry certs ca`); without it the
    system's trust store is used. `cert_file`/`key_file` present a client certificate for
    mutual TLS. Raises OSError / ssl.SSLError for missing or mismatched files.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = MIN_TLS_VERSION
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file is not None else None)
    return ctx
