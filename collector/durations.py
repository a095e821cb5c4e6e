"""Durations as people write them: `500ms`, `90s`, `15m`, `1.5h`, `30d`, `2w`.

One grammar for every setting and option that takes a duration: the collector's `retention`
setting and the query options (`--since 2h`, `--every 1m`). Callers word their own errors.
"""

from __future__ import annotations

import re
from typing import Final

NS_PER_S: Final = 1_000_000_000
UNIT_NS: Final[dict[str, int]] = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": NS_PER_S,
    "m": 60 * NS_PER_S,
    "h": 3_600 * NS_PER_S,
    "d": 86_400 * NS_PER_S,
    "w": 7 * 86_400 * NS_PER_S,
}
UNITS: Final = ", ".join(UNIT_NS)
_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d|w)\s*$")


def duration_ns(text: str) -> int | None:
    """The nanoseconds `text` means (0 for `0s`), or None if it is not a duration."""
    m = _DURATION_RE.match(text)
    if m is None:
        return None
    return round(float(m.group(1)) * UNIT_NS[m.group(2)])
