"""Wire protocol v1, sans-IO: frames, codec and the connection state machine.

The full specification, with byte layouts and worked examples, is `docs/protocol.md`;
this docstring is its summary. This module imports only the standard library and msgpack:
no sockets, no asyncio, no logging, no clock, no pydantic. Both the agent and the
collector drive a `Connection` and move bytes in and out of it themselves.

Framing: every frame is a 4-byte unsigned big-endian length N, then N bytes holding exactly
one msgpack value: an array whose first element is the message type.

    type  name     direction            fields after the type code
    1     HELLO    agent -> collector   version, device_id, token, agent, agent_version, dropped,
                                        stream (v1.1)
    2     WELCOME  collector -> agent   version, last_seq, max_frame_bytes, max_batch_readings,
                                        heartbeat_ms, minor (v1.1)
    3     BATCH    agent -> collector   seq, readings
    4     ACK      collector -> agent   seq, accepted, duplicate, rejects
    5     RETRY    collector -> agent   seq, reason, retry_after_ms
    6     PING     either               nonce
    7     PONG     either               nonce
    8     ERROR    either               code, message, fatal, seq (v1.1)
    9     BYE      either               reason
    10    GBATCH   agent -> collector   seq, readings, groups (v1.2)

Version 1.1 only appended optional fields (a v1.0 peer ignores them): HELLO.stream names the
agent's sequence stream (seq and the resume point are per (device, stream)),
WELCOME.minor says the collector speaks 1.1, ERROR.seq names the BATCH an error answers.

Version 1.2 added GBATCH, a batch whose readings may also travel as series groups
`[sensor, kind, unit, tags, [ts...], [values...]]` (len(ts) readings of one series). A
collector announces it with WELCOME.minor >= 2 (GROUPS_MINOR); an agent sends GBATCH only
then (`Connection.send` refuses it otherwise), because an older collector cannot store it.
Its readings, in index order, are `readings` then every group's members in order
(`expand_groups`); the ACK's reject indexes count in that order. `group_readings` turns a
list of readings into that form, keeping the order of each series' readings.

A reading is an array `[sensor, kind, ts, value, unit, tags]`: ts is int nanoseconds since
the Unix epoch (UTC; the msgpack Timestamp extension is accepted too), unit and tags may be
nil. Readings stay undecoded `object`s here: the collector validates them against
`schemas.readings`.

State machine (both roles):  AWAIT_HELLO --HELLO--> AWAIT_WELCOME --WELCOME--> READY;
any state --BYE or fatal ERROR--> CLOSED. Receivers ignore extra trailing message fields, so
fields can be added within v1; a breaking change bumps PROTOCOL_VERSION.

Errors: `LocalProtocolError` for misuse of this API, `RemoteProtocolError` for anything the
peer sent; a frame that fails to decode costs that frame only (the stream stays in sync)
until the bad-frame budget is spent.

Limits (constants below, each with its reason; docs/protocol.md §8): a declared frame length
is checked on the 4-byte header, before the body is buffered; msgpack decoding runs with
explicit limits on every str, map, bin, ext and array length, and only the BATCH readings /
ACK rejects list may exceed MAX_INNER_ARRAY_LEN, read element by element so that no large
declared length is ever preallocated.
"""

from __future__ import annotations

import enum
import itertools
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

import msgpack

from schemas import errors
from schemas.errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_VERSION: Final = 1
# Minor version this module speaks: 1.1 appended HELLO.stream, WELCOME.minor and ERROR.seq.
PROTOCOL_MINOR: Final = 2
# The first minor version whose collector accepts GBATCH (series groups), v1.2.
GROUPS_MINOR: Final = 2
# A stream id: short enough for a log line and a key column, wide enough for 128 random bits
# in hex (32 characters, what agents should use) or a UUID.
STREAM_ID_RE: Final = re.compile(r"\A[A-Za-z0-9_.:-]{1,64}\Z")

# 4-byte big-endian unsigned length prefix: any language reads a frame with two reads.
FRAME_HEADER_BYTES: Final = 4
_HEADER: Final = struct.Struct(">I")

# 1 MiB bounds the memory one connection can make us hold and still fits ~10k readings.
MAX_FRAME_BYTES: Final = 1 << 20
# Bounds the validation and commit work one frame can cause (~25 ms of collector CPU).
MAX_BATCH_READINGS: Final = 10_000
# Readings in one group (GBATCH): a group may hold a whole batch of one series. The total of
# readings and group members in a batch is still bounded by MAX_BATCH_READINGS.
MAX_GROUP_READINGS: Final = MAX_BATCH_READINGS
# Longest msgpack string accepted anywhere; event/text readings need 1 KiB of UTF-8 at most,
# and a few KiB leave room for error messages and tokens.
MAX_STR_BYTES: Final = 4096
# Widest map accepted anywhere: composite values and tags are small by design.
MAX_MAP_ENTRIES: Final = 64
# Readings never carry binary data; refusing bin keeps a size bomb from hiding there.
MAX_BIN_BYTES: Final = 0
# Largest ext payload: the msgpack Timestamp ext is at most 12 bytes.
MAX_EXT_BYTES: Final = 12
# Deepest nesting a valid frame has: message > readings > reading > value map. Deeper values
# never validate (every message field has a fixed scalar type; readings are checked by
# `schemas.readings`), and msgpack's own decoder refuses more than MSGPACK_MAX_DEPTH levels
# outright, so nesting costs at most that many small containers per frame.
MAX_NESTING_DEPTH: Final = 4
MSGPACK_MAX_DEPTH: Final = 1024
# Fields in one message: v1 messages have at most 7; the rest is room for additive fields.
MAX_MESSAGE_FIELDS: Final = 32
# Longest array anywhere except the two top-level lists (BATCH readings, ACK rejects): a
# reading has 6 elements and a reject 4. The decoder preallocates a declared array, so
# allowing MAX_BATCH_READINGS at every level would let 3 KB of nested array headers cost
# 1,024 x 10,000 slots (80 MB); with this bound a frame costs at most ~0.5 MB of slots.
MAX_INNER_ARRAY_LEN: Final = 64
# Frames from one peer that may fail to decode before the connection is closed: enough to
# survive a buggy field in one message type, not enough to let a fuzzer churn forever.
BAD_FRAME_BUDGET: Final = 16
# Heartbeat period the collector announces; a link silent for 3 periods is dead.
HEARTBEAT_MS: Final = 15_000
IDLE_TIMEOUT_S: Final = 3 * HEARTBEAT_MS / 1000
# The agent must send HELLO this soon after connecting.
HANDSHAKE_TIMEOUT_S: Final = 10.0
# Largest integer on the wire for seq, counts and timestamps: int64, what every language
# and SQLite store natively.
MAX_INT64: Final = (1 << 63) - 1


class MessageType(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    BATCH = 3
    ACK = 4
    RETRY = 5
    PING = 6
    PONG = 7
    ERROR = 8
    BYE = 9
    GBATCH = 10


class Role(enum.Enum):
    AGENT = "agent"
    COLLECTOR = "collector"


class State(enum.Enum):
    AWAIT_HELLO = "await_hello"
    AWAIT_WELCOME = "await_welcome"
    READY = "ready"
    CLOSED = "closed"


# ---------------------------------------------------------------------------- readings

WireValue: TypeAlias = "int | float | bool | str | Mapping[str, int | float | bool | str]"


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading as an agent builds it; `to_wire()` gives the v1 array."""

    sensor: str
    kind: str
    ts_ns: int
    value: WireValue
    unit: str | None = None
    tags: Mapping[str, str] | None = None

    def to_wire(self) -> list[object]:
        """The reading as the 6-element wire array."""
        return [
            self.sensor,
            self.kind,
            self.ts_ns,
            dict(self.value) if isinstance(self.value, Mapping) else self.value,
            self.unit,
            dict(self.tags) if self.tags is not None else None,
        ]


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Hello:
    device_id: str
    token: str
    agent: str = ""
    agent_version: str = ""
    # Readings the agent's spool dropped (full) since it last said so; reported, not fatal.
    dropped: int = 0
    version: int = PROTOCOL_VERSION
    # v1.1: the agent's sequence stream ("" = the device's default stream, v1.0 behaviour).
    stream: str = ""


@dataclass(frozen=True, slots=True)
class Welcome:
    last_seq: int
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_batch_readings: int = MAX_BATCH_READINGS
    heartbeat_ms: int = HEARTBEAT_MS
    version: int = PROTOCOL_VERSION
    # v1.1: the minor protocol version the collector speaks (0 when a v1.0 collector omits it).
    minor: int = 0


@dataclass(frozen=True, slots=True)
class ReadingGroup:
    """Readings of one series as an agent builds them (v1.2); `to_wire()` gives the group
    array `[sensor, kind, unit, tags, [ts...], [values...]]`."""

    sensor: str
    kind: str
    ts_ns: Sequence[int]
    values: Sequence[WireValue]
    unit: str | None = None
    tags: Mapping[str, str] | None = None

    def to_wire(self) -> list[object]:
        """The group as the 6-element wire array."""
        return [
            self.sensor,
            self.kind,
            self.unit,
            dict(self.tags) if self.tags is not None else None,
            list(self.ts_ns),
            [dict(v) if isinstance(v, Mapping) else v for v in self.values],
        ]


@dataclass(frozen=True, slots=True)
class Batch:
    """BATCH, or GBATCH (v1.2) when it has groups."""

    seq: int
    # Wire arrays (see `Reading.to_wire`); received readings are undecoded `object`s.
    readings: Sequence[object]
    # v1.2: wire group arrays (see `ReadingGroup.to_wire`). A received group has been checked
    # to be an array of 6 whose ts and values are arrays of one length (1..MAX_GROUP_READINGS);
    # its other elements are undecoded `object`s.
    groups: Sequence[object] = ()

    @property
    def size(self) -> int:
        """Readings in the batch: rows plus every group's members."""
        return len(self.readings) + sum(_group_len(g) for g in self.groups)


def _group_len(group: object) -> int:
    if isinstance(group, ReadingGroup):
        return len(group.ts_ns)
    if type(group) is list and len(group) == 6 and type(group[4]) is list:
        return len(group[4])
    return 0


GROUP_FIELDS: Final = ("sensor", "kind", "unit", "tags", "ts", "values")
"""Element names of a wire group, in order."""


def expand_groups(readings: Sequence[object], groups: Sequence[object]) -> list[object]:
    """A GBATCH's readings in index order, as wire reading arrays: `readings`, then each
    group's members `[sensor, kind, ts, value, unit, tags]` (docs/protocol.md §13).

    The groups must be well formed (as a decoded GBATCH's are); a group's tags map is shared
    by its members, not copied.
    """
    out = list(readings)
    for g in groups:
        w: list[object] = g.to_wire() if isinstance(g, ReadingGroup) else g  # type: ignore[assignment]  # a checked 6-element group
        sensor, kind, unit, tags, tss, values = w
        out.extend(
            [sensor, kind, t, v, unit, tags]
            for t, v in zip(tss, values, strict=True)  # type: ignore[call-overload]  # lists
        )
    return out


@dataclass(frozen=True, slots=True)
class GroupedReadings:
    """A list of readings in GBATCH form: `rows` and `groups`, and `order[i]`, the position
    in the original list of the reading with index i in the GBATCH (rows, then members)."""

    rows: list[object]
    groups: list[list[object]]
    order: list[int]


def group_readings(readings: Sequence[object], *, min_group: int = 2) -> GroupedReadings:
    """Group wire readings by series for a GBATCH, keeping each series' readings in order.

    Readings group when their sensor, kind, unit and tags are the same msgpack bytes (so a
    group's members are exactly the readings it replaces, even invalid ones); a series with
    fewer than `min_group` readings, and anything that is not a 6-element array, stays a row.
    """
    by_head: dict[bytes, list[int]] = {}
    loose: list[int] = []
    for i, r in enumerate(readings):
        if isinstance(r, Reading):
            r = r.to_wire()
        if type(r) is not list or len(r) != 6:
            loose.append(i)
            continue
        try:
            head = msgpack.packb([r[0], r[1], r[4], r[5]], use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            loose.append(i)
            continue
        by_head.setdefault(head, []).append(i)
    wires = [r.to_wire() if isinstance(r, Reading) else r for r in readings]
    groups: list[list[object]] = []
    members: list[int] = []
    for idx in by_head.values():
        if len(idx) < min_group:
            loose.extend(idx)
            continue
        for start in range(0, len(idx), MAX_GROUP_READINGS):
            part = idx[start : start + MAX_GROUP_READINGS]
            first: list[object] = wires[part[0]]  # type: ignore[assignment]  # a 6-element list
            groups.append(
                [
                    first[0],
                    first[1],
                    first[4],
                    first[5],
                    [wires[j][2] for j in part],  # type: ignore[index]  # 6-element lists
                    [wires[j][3] for j in part],  # type: ignore[index]  # 6-element lists
                ]
            )
            members.extend(part)
    loose.sort()
    return GroupedReadings([wires[i] for i in loose], groups, loose + members)


@dataclass(frozen=True, slots=True)
class Reject:
    index: int
    code: str
    path: str
    message: str


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    accepted: int
    duplicate: int
    rejects: tuple[Reject, ...] = ()

    @property
    def rejected(self) -> int:
        return len(self.rejects)


@dataclass(frozen=True, slots=True)
class Retry:
    seq: int
    reason: str
    retry_after_ms: int


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int = 0


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int = 0


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str
    fatal: bool = True
    # v1.1: the BATCH seq this error answers (0: none, or the seq could not be read).
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Bye:
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the stream cleanly at a frame boundary."""


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by `Connection.next_event` when no complete frame is buffered."""

Event: TypeAlias = Hello | Welcome | Batch | Ack | Retry | Ping | Pong | Error | Bye

# ---------------------------------------------------------------------------- codec

# Options for every msgpack decode. `max_array_len` bounds every array except the two
# top-level lists, which `_unpack_message` reads element by element (no preallocation).
_UNPACK_OPTS: Final[dict[str, object]] = {
    "raw": False,
    "strict_map_key": True,
    "use_list": True,
    "timestamp": 2,  # msgpack Timestamp ext (-1) decodes straight to int nanoseconds
    "max_str_len": MAX_STR_BYTES,
    "max_bin_len": MAX_BIN_BYTES,
    "max_array_len": MAX_INNER_ARRAY_LEN,
    "max_map_len": MAX_MAP_ENTRIES,
    "max_ext_len": MAX_EXT_BYTES,
}
# Exceptions msgpack raises for bytes that are not one valid, in-limit msgpack value.
# RecursionError: the pure-Python fallback decoder recurses once per nesting level.
_DECODE_ERRORS: Final = (ValueError, TypeError, RecursionError, msgpack.UnpackException)


def encode_body(event: Event) -> bytes:
    """Encode one event as a msgpack body (no length prefix)."""
    return msgpack.packb(_to_array(event), use_bin_type=True)


def encode(event: Event) -> bytes:
    """Encode one event as a complete frame: length prefix plus body."""
    body = encode_body(event)
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes | bytearray | memoryview) -> Event:
    """Decode one frame body into an event.

    Raises RemoteProtocolError (non-fatal): `malformed_frame` when the body is not exactly one
    valid msgpack value within the limits, `bad_message` when it is not a well-formed v1
    message. When the body starts like a BATCH with a valid seq, the error carries that seq.
    """
    try:
        return _decode_body(body)
    except RemoteProtocolError as exc:
        exc.seq = exc.seq or _batch_seq(body)
        raise


def _batch_seq(body: bytes | bytearray | memoryview) -> int:
    """The seq of a body that begins `[3, seq, ...]` with a valid seq, else 0 (error path)."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(body), 1), **_UNPACK_OPTS)  # type: ignore[arg-type]  # typed opts dict
    unpacker.feed(body)
    try:
        if unpacker.read_array_header() < 2 or unpacker.unpack() not in _BATCH_CODES:
            return 0
        seq = unpacker.unpack()
    except (*_DECODE_ERRORS, StopIteration):
        return 0
    return seq if type(seq) is int and 0 < seq <= MAX_INT64 else 0


def _decode_body(body: bytes | bytearray | memoryview) -> Event:
    try:
        value = _unpack_message(body)
    except _NotAnArray:
        # A field that must be an array is not: decode the whole body (every array is bounded
        # by MAX_INNER_ARRAY_LEN here) so `parse_message` can say which field is wrong.
        try:
            value = msgpack.unpackb(body, **_UNPACK_OPTS)  # type: ignore[arg-type]  # typed opts dict
        except _DECODE_ERRORS as exc:
            raise _malformed(exc) from None
    except _DECODE_ERRORS as exc:
        raise _malformed(exc) from None
    return parse_message(value)


class _NotAnArray(Exception):
    """The next value in the body is not an array header (or not valid msgpack at all)."""


def _malformed(exc: BaseException) -> RemoteProtocolError:
    detail = str(exc) or type(exc).__name__
    return RemoteProtocolError(
        errors.MALFORMED_FRAME, f"frame body is not valid msgpack: {detail:.200}", fatal=False
    )


# Position of the one long list in the messages that carry one.
_LIST_FIELD: Final = {
    int(MessageType.BATCH): 2,
    int(MessageType.GBATCH): 2,
    int(MessageType.ACK): 4,
}
_BATCH_CODES: Final = (int(MessageType.BATCH), int(MessageType.GBATCH))
# Position of GBATCH's groups, read by `_unpack_groups`.
_GROUPS_FIELD: Final = 3


def _unpack_message(body: bytes | bytearray | memoryview) -> list[object]:
    """Decode a body that must be one msgpack array, reading the message's long list (BATCH
    readings, ACK rejects) element by element so its declared length is never preallocated.
    """
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(body), 1), **_UNPACK_OPTS)  # type: ignore[arg-type]  # typed opts dict
    unpacker.feed(body)
    try:
        nfields = unpacker.read_array_header()
    except ValueError:
        raise _NotAnArray from None
    if nfields > MAX_MESSAGE_FIELDS:
        raise ValueError(f"message of {nfields} fields exceeds the limit of {MAX_MESSAGE_FIELDS}")
    value: list[object] = []
    for i in range(nfields):
        code = value[0] if value else None
        if i and type(code) is int and _LIST_FIELD.get(code) == i:
            try:
                n = unpacker.read_array_header()
            except ValueError:
                raise _NotAnArray from None
            if n > MAX_BATCH_READINGS:
                raise ValueError(f"list of {n} exceeds the limit of {MAX_BATCH_READINGS}")
            items = list(itertools.islice(unpacker, n))
            if len(items) != n:
                raise ValueError(f"list declares {n} elements, the body holds {len(items)}")
            value.append(items)
        elif i == _GROUPS_FIELD and code == MessageType.GBATCH:
            value.append(_unpack_groups(unpacker))
        else:
            value.append(unpacker.unpack())
    if unpacker.tell() != len(body):
        raise ValueError(f"{len(body) - unpacker.tell()} trailing bytes after the message")
    return value


def _unpack_groups(unpacker: msgpack.Unpacker) -> object:
    """GBATCH's groups: the list and each group's ts and values columns are read element by
    element (they may be longer than MAX_INNER_ARRAY_LEN, and a declared length is never
    preallocated); everything else is decoded with the usual limits. What is not a
    well-formed group is returned as decoded, for `parse_message` to say what is wrong."""
    try:
        n = unpacker.read_array_header()
    except ValueError:
        return unpacker.unpack()
    if n > MAX_BATCH_READINGS:
        raise ValueError(f"list of {n} groups exceeds the limit of {MAX_BATCH_READINGS}")
    groups: list[object] = []
    total = 0
    for _ in range(n):
        try:
            m = unpacker.read_array_header()
        except ValueError:
            groups.append(unpacker.unpack())
            continue
        if m > MAX_INNER_ARRAY_LEN:
            raise ValueError(f"group of {m} elements exceeds the limit of {MAX_INNER_ARRAY_LEN}")
        group: list[object] = []
        for j in range(m):
            if m == 6 and j >= 4:
                try:
                    k = unpacker.read_array_header()
                except ValueError:
                    group.append(unpacker.unpack())
                    continue
                if k > MAX_GROUP_READINGS:
                    raise ValueError(
                        f"group column of {k} exceeds the limit of {MAX_GROUP_READINGS}"
                    )
                if j == 4:
                    total += k
                    if total > MAX_BATCH_READINGS:
                        raise ValueError(
                            f"more than {MAX_BATCH_READINGS} readings in the groups of a batch"
                        )
                items = list(itertools.islice(unpacker, k))
                if len(items) != k:
                    raise ValueError(f"list declares {k} elements, the body holds {len(items)}")
                group.append(items)
            else:
                group.append(unpacker.unpack())
        groups.append(group)
    return groups


def _to_array(event: Event) -> list[object]:
    match event:
        case Hello():
            return [
                MessageType.HELLO,
                event.version,
                event.device_id,
                event.token,
                event.agent,
                event.agent_version,
                event.dropped,
                *((event.stream,) if event.stream else ()),
            ]
        case Welcome():
            return [
                MessageType.WELCOME,
                event.version,
                event.last_seq,
                event.max_frame_bytes,
                event.max_batch_readings,
                event.heartbeat_ms,
                *((event.minor,) if event.minor else ()),
            ]
        case Batch():
            readings = [r.to_wire() if isinstance(r, Reading) else r for r in event.readings]
            if event.groups:
                groups = [g.to_wire() if isinstance(g, ReadingGroup) else g for g in event.groups]
                return [MessageType.GBATCH, event.seq, readings, groups]
            return [MessageType.BATCH, event.seq, readings]
        case Ack():
            rejects = [[r.index, r.code, r.path, r.message] for r in event.rejects]
            return [MessageType.ACK, event.seq, event.accepted, event.duplicate, rejects]
        case Retry():
            return [MessageType.RETRY, event.seq, event.reason, event.retry_after_ms]
        case Ping():
            return [MessageType.PING, event.nonce]
        case Pong():
            return [MessageType.PONG, event.nonce]
        case Error():
            tail = (event.seq,) if event.seq else ()
            return [MessageType.ERROR, event.code, event.message, event.fatal, *tail]
        case Bye():
            return [MessageType.BYE, event.reason]
    raise LocalProtocolError(f"not a protocol event: {event!r}")


def _bad(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(errors.BAD_MESSAGE, msg, fatal=False)


class _Fields:
    """Typed access to the positional fields of one decoded message array."""

    __slots__ = ("_name", "_values")

    def __init__(self, name: str, values: list[object]) -> None:
        self._name = name
        self._values = values

    def _get(self, i: int, what: str, default: object) -> object:
        if i < len(self._values):
            return self._values[i]
        if default is _REQUIRED:
            raise _bad(f"{self._name}: missing field {i} ({what})")
        return default

    def uint(self, i: int, what: str, default: object = None) -> int:
        v = self._get(i, what, _REQUIRED if default is None else default)
        if type(v) is not int or not 0 <= v <= MAX_INT64:
            raise _bad(f"{self._name}.{what} must be an integer in 0..2^63-1, got {v!r:.40}")
        return v

    def str_(self, i: int, what: str, default: object = None) -> str:
        v = self._get(i, what, _REQUIRED if default is None else default)
        if type(v) is not str:
            raise _bad(f"{self._name}.{what} must be a string, got {type(v).__name__}")
        return v

    def bool_(self, i: int, what: str, default: object = None) -> bool:
        v = self._get(i, what, _REQUIRED if default is None else default)
        if type(v) is not bool:
            raise _bad(f"{self._name}.{what} must be a boolean, got {type(v).__name__}")
        return v

    def array(self, i: int, what: str) -> list[object]:
        v = self._get(i, what, _REQUIRED)
        if type(v) is not list:
            raise _bad(f"{self._name}.{what} must be an array, got {type(v).__name__}")
        return v


_REQUIRED: Final = object()


def parse_message(value: object) -> Event:
    """Turn one decoded msgpack value into an event, checking every field's type.

    Raises RemoteProtocolError (non-fatal) for anything that is not a v1 message.
    """
    if type(value) is not list or not value:
        raise _bad(f"a message must be a non-empty array, got {type(value).__name__}")
    code = value[0]
    if type(code) is not int:
        raise _bad("the first element of a message must be its integer type code")
    try:
        mtype = MessageType(code)
    except ValueError:
        raise _bad(f"unknown message type {code}") from None
    f = _Fields(mtype.name, value)
    match mtype:
        case MessageType.BATCH:
            return Batch(seq=f.uint(1, "seq"), readings=f.array(2, "readings"))
        case MessageType.GBATCH:
            return _parse_gbatch(f)
        case MessageType.ACK:
            rejects = []
            for i, r in enumerate(f.array(4, "rejects")):
                if type(r) is not list:
                    raise _bad(f"ACK.rejects[{i}] must be an array")
                rf = _Fields(f"ACK.rejects[{i}]", r)
                rejects.append(
                    Reject(
                        rf.uint(0, "index"),
                        rf.str_(1, "code"),
                        rf.str_(2, "path"),
                        rf.str_(3, "message"),
                    )
                )
            return Ack(
                f.uint(1, "seq"), f.uint(2, "accepted"), f.uint(3, "duplicate"), tuple(rejects)
            )
        case MessageType.HELLO:
            return Hello(
                version=f.uint(1, "version"),
                device_id=f.str_(2, "device_id"),
                token=f.str_(3, "token"),
                agent=f.str_(4, "agent", ""),
                agent_version=f.str_(5, "agent_version", ""),
                dropped=f.uint(6, "dropped", 0),
                stream=f.str_(7, "stream", ""),
            )
        case MessageType.WELCOME:
            return Welcome(
                version=f.uint(1, "version"),
                last_seq=f.uint(2, "last_seq"),
                max_frame_bytes=f.uint(3, "max_frame_bytes", MAX_FRAME_BYTES),
                max_batch_readings=f.uint(4, "max_batch_readings", MAX_BATCH_READINGS),
                heartbeat_ms=f.uint(5, "heartbeat_ms", HEARTBEAT_MS),
                minor=f.uint(6, "minor", 0),
            )
        case MessageType.RETRY:
            return Retry(f.uint(1, "seq"), f.str_(2, "reason"), f.uint(3, "retry_after_ms"))
        case MessageType.PING:
            return Ping(f.uint(1, "nonce", 0))
        case MessageType.PONG:
            return Pong(f.uint(1, "nonce", 0))
        case MessageType.ERROR:
            return Error(
                f.str_(1, "code"),
                f.str_(2, "message", ""),
                f.bool_(3, "fatal", True),
                f.uint(4, "seq", 0),
            )
        case MessageType.BYE:
            return Bye(f.str_(1, "reason", ""))
    raise AssertionError(f"unhandled message type {mtype}")  # pragma: no cover


def _parse_gbatch(f: _Fields) -> Batch:
    seq = f.uint(1, "seq")
    readings = f.array(2, "readings")
    groups = f.array(3, "groups")
    total = len(readings)
    for i, g in enumerate(groups):
        if type(g) is not list or len(g) != 6:
            raise _bad(f"GBATCH.groups[{i}] must be an array of 6 elements {list(GROUP_FIELDS)}")
        tss, values = g[4], g[5]
        if type(tss) is not list or type(values) is not list:
            raise _bad(f"GBATCH.groups[{i}]: ts and values must be arrays")
        if len(tss) != len(values) or not tss:
            raise _bad(
                f"GBATCH.groups[{i}]: ts and values must have one length, at least 1 "
                f"(got {len(tss)} and {len(values)})"
            )
        total += len(tss)
    if total > MAX_BATCH_READINGS:
        raise _bad(f"GBATCH of {total} readings exceeds the limit of {MAX_BATCH_READINGS}")
    if not groups:
        raise _bad("GBATCH.groups must not be empty (send a BATCH)")
    return Batch(seq, readings, groups)


# ---------------------------------------------------------------------------- connection

# What each role may send / receive in each state. Keys are (role, state).
_AGENT_SENDS: Final = {
    State.AWAIT_HELLO: (Hello, Bye, Error),
    State.AWAIT_WELCOME: (Bye, Error, Ping, Pong),
    State.READY: (Batch, Ping, Pong, Bye, Error),
}
_COLLECTOR_SENDS: Final = {
    State.AWAIT_HELLO: (Error, Bye),
    State.AWAIT_WELCOME: (Welcome, Error, Bye),
    State.READY: (Ack, Retry, Ping, Pong, Error, Bye),
}


class Connection:
    """One side of one TCP connection, without the I/O.

    Feed received bytes with `receive_data` (b"" for EOF), pull events with `next_event`
    until it returns NEED_DATA, and turn outgoing events into bytes with `send`.
    """

    def __init__(
        self,
        role: Role,
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        bad_frame_budget: int = BAD_FRAME_BUDGET,
        max_send_bytes: int | None = None,
    ) -> None:
        self.role = role
        self.state = State.AWAIT_HELLO
        self.max_frame_bytes = max_frame_bytes
        # Largest body this side sends; None: the same as max_frame_bytes. A collector sends
        # up to MAX_FRAME_BYTES whatever it accepts (docs/protocol.md §8), so a large ACK of
        # rejects still fits when its own receive limit is set lower.
        self.max_send_bytes = max_send_bytes
        self.bad_frame_budget = bad_frame_budget
        self.bad_frames = 0
        self.bytes_received = 0
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._sends = _AGENT_SENDS if role is Role.AGENT else _COLLECTOR_SENDS
        # The collector's WELCOME.minor (sent or received): GBATCH needs GROUPS_MINOR.
        self.peer_minor = 0

    # -- receiving

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the peer; b"" means the peer closed its side."""
        if not data:
            self._eof = True
            return
        if self.state is State.CLOSED:
            return  # nothing more is read from a closed connection
        self.bytes_received += len(data)
        if self._pos and self._pos > len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_event(self) -> Event | ConnectionClosed | _NeedData:
        """Return the next event, NEED_DATA, or ConnectionClosed at a clean EOF.

        Raises RemoteProtocolError for a bad frame; when `.fatal` the state is now CLOSED.
        """
        if self.state is State.CLOSED:
            return ConnectionClosed()
        avail = len(self._buf) - self._pos
        if avail < FRAME_HEADER_BYTES:
            if self._eof:
                if avail:
                    self._fail(errors.TRUNCATED_FRAME, "connection closed inside a frame header")
                self.state = State.CLOSED
                return ConnectionClosed()
            return NEED_DATA
        (length,) = _HEADER.unpack_from(self._buf, self._pos)
        if length > self.max_frame_bytes:
            # Refused from the header alone: the body is never buffered.
            self._fail(
                errors.FRAME_TOO_LARGE,
                f"declared frame length {length} exceeds the limit of {self.max_frame_bytes} bytes",
            )
        if avail < FRAME_HEADER_BYTES + length:
            if self._eof:
                self._fail(
                    errors.TRUNCATED_FRAME,
                    f"connection closed after {avail - FRAME_HEADER_BYTES} of {length} body bytes",
                )
            return NEED_DATA
        start = self._pos + FRAME_HEADER_BYTES
        self._pos = start + length
        if length == 0:
            return self._bad_frame(errors.MALFORMED_FRAME, "empty frame body")
        try:
            # A copy, not a memoryview: an exception kept by the caller would otherwise pin an
            # export of the buffer and make the next `receive_data` fail with BufferError.
            event = decode_body(self._buf[start : start + length])
        except RemoteProtocolError as exc:
            return self._bad_frame(exc.code, exc.message, exc.seq)
        self._check_receive(event)
        return event

    def _fail(self, code: str, message: str, seq: int = 0) -> None:
        self.state = State.CLOSED
        self._buf.clear()
        self._pos = 0
        raise RemoteProtocolError(code, message, fatal=True, seq=seq)

    def _bad_frame(self, code: str, message: str, seq: int = 0) -> _NeedData:
        self.bad_frames += 1
        if self.bad_frames > self.bad_frame_budget:
            self._fail(
                errors.TOO_MANY_BAD_FRAMES,
                f"{message} (bad-frame budget of {self.bad_frame_budget} spent)",
                seq,
            )
        raise RemoteProtocolError(code, message, fatal=False, seq=seq)

    def _check_receive(self, event: Event) -> None:
        peer = Role.COLLECTOR if self.role is Role.AGENT else Role.AGENT
        allowed = (_AGENT_SENDS if peer is Role.AGENT else _COLLECTOR_SENDS)[self.state]
        if (
            isinstance(event, Batch)
            and event.groups
            and self.role is Role.COLLECTOR
            and self.peer_minor < GROUPS_MINOR
        ):
            self._bad_frame(
                errors.UNEXPECTED_MESSAGE,
                f"GBATCH is not allowed: this collector announced minor {self.peer_minor}",
                event.seq,
            )
        if not isinstance(event, allowed):
            name = type(event).__name__.upper()
            if self.state is not State.READY:
                self._fail(
                    errors.UNEXPECTED_MESSAGE,
                    f"{name} is not allowed in state {self.state.value}",
                )
            self._bad_frame(
                errors.UNEXPECTED_MESSAGE, f"{name} is not allowed from the {peer.value}"
            )
        self._advance(event, sent=False)

    # -- sending

    def send(self, event: Event) -> bytes:
        """Encode an event as a frame, checking that this role may send it now.

        Raises LocalProtocolError when the event is not allowed in the current state.
        """
        if self.state is State.CLOSED:
            # A final ERROR/BYE may still be written after the peer broke the protocol.
            if isinstance(event, Error | Bye):
                return encode(event)
            raise LocalProtocolError(f"cannot send {type(event).__name__}: connection closed")
        if not isinstance(event, self._sends[self.state]):
            raise LocalProtocolError(
                f"the {self.role.value} cannot send {type(event).__name__} in state "
                f"{self.state.value}"
            )
        if isinstance(event, Batch) and event.groups and self.peer_minor < GROUPS_MINOR:
            # An older collector would refuse it (unknown type): send it BATCH readings.
            raise LocalProtocolError(
                f"GBATCH needs a collector that announced minor >= {GROUPS_MINOR} "
                f"(this one announced {self.peer_minor})"
            )
        data = encode(event)
        limit = self.max_frame_bytes if self.max_send_bytes is None else self.max_send_bytes
        if len(data) - FRAME_HEADER_BYTES > limit:
            raise LocalProtocolError(
                f"{type(event).__name__} frame of {len(data)} bytes exceeds the limit of {limit}"
            )
        self._advance(event, sent=True)
        return data

    def _advance(self, event: Event, *, sent: bool) -> None:
        if isinstance(event, Hello):
            self.state = State.AWAIT_WELCOME
        elif isinstance(event, Welcome):
            self.state = State.READY
            self.peer_minor = event.minor
        elif isinstance(event, Bye) or (isinstance(event, Error) and event.fatal):
            self.state = State.CLOSED


__all__ = [
    "BAD_FRAME_BUDGET",
    "FRAME_HEADER_BYTES",
    "GROUPS_MINOR",
    "GROUP_FIELDS",
    "HANDSHAKE_TIMEOUT_S",
    "HEARTBEAT_MS",
    "IDLE_TIMEOUT_S",
    "MAX_BATCH_READINGS",
    "MAX_FRAME_BYTES",
    "MAX_GROUP_READINGS",
    "MAX_INNER_ARRAY_LEN",
    "MAX_INT64",
    "MAX_MAP_ENTRIES",
    "MAX_MESSAGE_FIELDS",
    "MAX_NESTING_DEPTH",
    "MAX_STR_BYTES",
    "MSGPACK_MAX_DEPTH",
    "NEED_DATA",
    "PROTOCOL_MINOR",
    "PROTOCOL_VERSION",
    "STREAM_ID_RE",
    "Ack",
    "Batch",
    "Bye",
    "Connection",
    "ConnectionClosed",
    "Error",
    "Event",
    "GroupedReadings",
    "Hello",
    "MessageType",
    "Ping",
    "Pong",
    "Reading",
    "ReadingGroup",
    "Reject",
    "Retry",
    "Role",
    "State",
    "Welcome",
    "decode_body",
    "encode",
    "encode_body",
    "expand_groups",
    "group_readings",
    "parse_message",
]
