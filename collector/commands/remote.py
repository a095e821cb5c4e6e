"""The read-side commands' client for a running collector's HTTP API (`--url`).

The few GETs `telemetry query|series|tail|rejected|export --url` need: one JSON document,
pages followed by their `next` cursor, and the Server-Sent Events of /api/v1/stream, on the
standard library's http.client.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Generator, Iterator, Sequence
from typing import Final

import click

from collector.errors import ConfigError
from collector.query import readings as ql

# Rows per HTTP page when a command reads through --url.
REMOTE_PAGE_ROWS: Final = 5_000
# Seconds to wait for the collector's HTTP API to answer one request.
REMOTE_TIMEOUT_S: Final = 30.0


class Remote:
    """The few GETs the commands need from a collector's HTTP API (http.client, no deps)."""

    def __init__(self, url: str, token: str | None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--url: {url!r} is not an http:// or https:// URL")
        self.parts = parts
        self.base = url.rstrip("/")
        self.token = token

    def _request(
        self, path: str, params: Sequence[tuple[str, str]]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        cls = (
            http.client.HTTPSConnection
            if self.parts.scheme == "https"
            else http.client.HTTPConnection
        )
        conn = cls(self.parts.netloc, timeout=REMOTE_TIMEOUT_S)
        qs = urllib.parse.urlencode(list(params))
        target = f"{self.parts.path.rstrip('/')}/api/v1/{path}" + (f"?{qs}" if qs else "")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise click.ClickException(f"--url: cannot reach {self.base}: {exc}") from None
        if resp.status != 200:
            try:
                body = json.loads(resp.read() or b"{}")
                msg = body.get("error") if isinstance(body, dict) else None
            except ValueError:
                msg = None
            conn.close()
            raise click.ClickException(f"{self.base}: HTTP {resp.status}: {msg or resp.reason}")
        return conn, resp

    def get(self, path: str, params: Sequence[tuple[str, str]]) -> dict[str, object]:
        conn, resp = self._request(path, params)
        try:
            data = json.loads(resp.read())
        finally:
            conn.close()
        assert isinstance(data, dict)
        return data

    def rows(
        self, path: str, key: str, params: Sequence[tuple[str, str]], limit: int | None
    ) -> Iterator[ql.Row]:
        """Follow `next` cursors; stops after `limit` rows."""
        n = 0
        cursor: str | None = None
        while True:
            page = REMOTE_PAGE_ROWS if limit is None else min(REMOTE_PAGE_ROWS, limit - n)
            p = [*params, ("limit", str(page))] + ([("cursor", cursor)] if cursor else [])
            data = self.get(path, p)
            batch = data.get(key)
            assert isinstance(batch, list)
            for row in batch:
                yield row
                n += 1
            nxt = data.get("next")
            if not isinstance(nxt, str) or (limit is not None and n >= limit):
                return
            cursor = nxt

    def stream(
        self, params: Sequence[tuple[str, str]], deadline: float | None
    ) -> Generator[ql.Row, None, None]:
        """Readings from /stream (Server-Sent Events) as they arrive, until `deadline`."""
        conn, resp = self._request("stream", params)
        try:
            while True:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    conn.sock.settimeout(left)  # a quiet stream still ends on time
                raw = resp.readline()
                if not raw:
                    return  # the collector ended the stream (shutdown)
                line = raw.decode().rstrip("\r\n")
                if line == ": ready":
                    click.echo(f"tail: following {self.base}", err=True)
                elif line.startswith("data: "):
                    row = json.loads(line[6:])
                    assert isinstance(row, dict)
                    yield row
        except TimeoutError:
            return  # --for elapsed while the stream was quiet
        finally:
            conn.close()


def filter_params(f: ql.Filters) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    p += [("device", d) for d in f.devices]
    p += [("sensor", s) for s in f.sensors]
    p += [("kind", k) for k in f.kinds]
    p += [("field", x) for x in f.fields]
    p += [("tag", f"{k}={v}") for k, v in f.tags]
    return p


def range_params(since: int | None, until: int | None) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    if since is not None:
        p.append(("since", f"@{since}"))
    if until is not None:
        p.append(("until", f"@{until}"))
    return p
