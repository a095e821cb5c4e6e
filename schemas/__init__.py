"""The shared contract between agents and the collector.

`schemas.wire` (the sans-IO protocol) and `schemas.errors` need only msgpack, so an agent
imports them without pydantic. The validation names (`ReadingValidator`, kinds) come from
`schemas.readings` and are loaded lazily, on first access, for the same reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from schemas.kinds import BUILTIN_KINDS, KindFileError, KindSpec, load_kinds_file
from schemas.wire import (
    PROTOCOL_VERSION,
    Ack,
    Batch,
    Bye,
    Connection,
    ConnectionClosed,
    Error,
    Hello,
    Ping,
    Pong,
    Reading,
    Reject,
    Retry,
    Role,
    State,
    Welcome,
)

if TYPE_CHECKING:
    from schemas.readings import BatchResult, ReadingValidator, ValidReading

__all__ = [
    "BUILTIN_KINDS",
    "PROTOCOL_VERSION",
    "Ack",
    "Batch",
    "BatchResult",
    "Bye",
    "Connection",
    "ConnectionClosed",
    "Error",
    "Hello",
    "KindFileError",
    "KindSpec",
    "LocalProtocolError",
    "Ping",
    "Pong",
    "ProtocolError",
    "Reading",
    "ReadingValidator",
    "Reject",
    "RemoteProtocolError",
    "Retry",
    "Role",
    "State",
    "ValidReading",
    "Welcome",
    "load_kinds_file",
]

_LAZY = {"BatchResult", "ReadingValidator", "ValidReading"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from schemas import readings

        return getattr(readings, name)
    raise AttributeError(f"module 'schemas' has no attribute {name!r}")
