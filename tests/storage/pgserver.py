"""A throwaway PostgreSQL database per test, on the local server.

The server is the one at 127.0.0.1:5432 (trust auth; user postgres or root; maintenance
database `test`), or the one `TELEMETRY_TEST_PG` names (a postgresql:// URL whose database is
the maintenance one). Each database is `telemetry_test_<random>`, created for the test and
dropped after it. Without a reachable server the tests skip with one line saying how to get
one; with CI=true they fail instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from urllib.parse import urlsplit, urlunsplit

import pytest

ENV: str = "TELEMETRY_TEST_PG"
DEFAULT_URLS: tuple[str, ...] = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)
SKIP_REASON: str = (
    "PostgreSQL not reachable at 127.0.0.1:5432: start one, or set "
    "TELEMETRY_TEST_PG=postgresql://..."
)


@cache
def maintenance_url() -> str | None:
    """The URL of a reachable server's maintenance database, or None."""
    try:
        import psycopg
    except ImportError:
        return None
    given = os.environ.get(ENV)
    for url in (given,) if given else DEFAULT_URLS:
        try:
            psycopg.connect(url, connect_timeout=3).close()
        except psycopg.Error:
            continue
        return url
    return None


def require_server() -> str:
    """The maintenance URL; skips the test (fails it when CI=true) without a server."""
    url = maintenance_url()
    if url is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {SKIP_REASON} (and install the postgres extra)")
        pytest.skip(SKIP_REASON)
    return url


def _with_database(url: str, name: str) -> str:
    """`url` (a postgresql:// URL) naming database `name` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextmanager
def throwaway_database() -> Iterator[str]:
    """Create `telemetry_test_<random>`, yield its URL, drop it (with any connection left)."""
    import psycopg

    admin = require_server()
    name = f"telemetry_test_{secrets.token_hex(6)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield _with_database(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
