"""Protocol error hierarchy shared by the agent and the collector.

    ProtocolError
    ├── LocalProtocolError   our own code misused the API (a bug on this side)
    └── RemoteProtocolError  the peer sent something illegal (its fault; reply, maybe close)

`RemoteProtocolError` carries the wire error code the receiver should put in its ERROR
frame and whether the connection must close. Random bytes from a peer can only ever raise
`RemoteProtocolError` out of `schemas.wire`; anything else escaping is a bug.

No I/O and no third-party imports in this module.
"""

from __future__ import annotations

from typing import Final

# Wire error codes (ERROR frame, field `code`). See docs/protocol.md §7.
MALFORMED_FRAME: Final = "malformed_frame"
FRAME_TOO_LARGE: Final = "frame_too_large"
BAD_MESSAGE: Final = "bad_message"
UNEXPECTED_MESSAGE: Final = "unexpected_message"
UNSUPPORTED_VERSION: Final = "unsupported_version"
AUTH_FAILED: Final = "auth_failed"
TOO_MANY_BAD_FRAMES: Final = "too_many_bad_frames"
TRUNCATED_FRAME: Final = "truncated_frame"
HANDSHAKE_TIMEOUT: Final = "handshake_timeout"
IDLE_TIMEOUT: Final = "idle_timeout"
SERVER_BUSY: Final = "server_busy"
SHUTTING_DOWN: Final = "shutting_down"
INTERNAL_ERROR: Final = "internal_error"
# v1.1: a newer HELLO for the same (device, stream) took the session over.
SESSION_REPLACED: Final = "session_replaced"

ERROR_CODES: Final = frozenset(
    {
        MALFORMED_FRAME,
        FRAME_TOO_LARGE,
        BAD_MESSAGE,
        UNEXPECTED_MESSAGE,
        UNSUPPORTED_VERSION,
        AUTH_FAILED,
        TOO_MANY_BAD_FRAMES,
        TRUNCATED_FRAME,
        HANDSHAKE_TIMEOUT,
        IDLE_TIMEOUT,
        SERVER_BUSY,
        SHUTTING_DOWN,
        INTERNAL_ERROR,
        SESSION_REPLACED,
    }
)


class ProtocolError(Exception):
    """Base of every protocol error."""


class LocalProtocolError(ProtocolError):
    """Our own code tried something the protocol forbids (e.g. sending BATCH before WELCOME)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something illegal.

    `code` is the wire error code for the ERROR reply; `fatal` says whether the connection
    is now closed (oversized frame, broken handshake, bad-frame budget spent) or only this
    frame was discarded and the stream is still in sync. `seq` is the seq of the BATCH the
    bad frame held, when it could be read (0 otherwise): the ERROR reply names it.
    """

    def __init__(self, code: str, message: str, *, fatal: bool, seq: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal
        self.seq = seq

    def __repr__(self) -> str:
        return f"RemoteProtocolError({self.code!r}, {self.message!r}, fatal={self.fatal})"
