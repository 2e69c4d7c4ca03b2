"""Voice gateway v8 messages (ops 0-31): typed values, JSON text frames and binary frames.

The voice WebSocket carries two kinds of frames (protocol.md §1.2, §5.5):

- **text** frames hold JSON ``{"op": <int>, "d": <payload>, "seq"?: <int>}``; the
  server adds the top-level ``seq`` to messages it may have to re-send;
- **binary** frames carry only the DAVE MLS opcodes 25-30. Server to client:
  ``seq u16 BE | op u8 | payload``; client to server: ``op u8 | payload``.

Each message is a frozen dataclass with an ``op`` class variable; each field's
metadata says how it travels (JSON key and check, or binary layout), and one
generic reader and writer per frame kind follow that table. :func:`parse`
(or :func:`parse_text` / :func:`parse_binary`) turns a frame into an
:class:`Envelope` holding the message and its ``seq``; :func:`serialize` turns a
message back into a frame. Opcodes this module does not know become
:class:`UnknownMessage`, since a client must ignore server opcodes it does not know.

Parsers raise only :class:`~rxvoice.errors.MalformedMessage` on bad input and
validate every field they return (integer ranges, snowflake strings, a 32-byte
key), so later layers can trust the values. :func:`serialize` validates the
same way and raises :class:`~rxvoice.errors.UsageError`. No error message
contains a field's value, so tokens and keys never leak into logs.

Example:
    >>> serialize(Heartbeat(nonce=1501184119561, seq_ack=10))
    '{"op":3,"d":{"t":1501184119561,"seq_ack":10}}'
    >>> parse('{"op":6,"d":{"t":1501184119561}}', from_server=True)
    Envelope(message=HeartbeatAck(nonce=1501184119561), seq=None)
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import ClassVar, NoReturn, TypeAlias, TypeVar, cast

from rxvoice.errors import MalformedMessage, RxVoiceError, UsageError

__all__ = [
    "MAX_FRAME_SIZE",
    "Opcode",
    "ProposalsOperation",
    "Identify",
    "SelectProtocol",
    "Ready",
    "Heartbeat",
    "SessionDescription",
    "Speaking",
    "HeartbeatAck",
    "Resume",
    "Hello",
    "Resumed",
    "ClientsConnect",
    "ClientDisconnect",
    "ClientFlags",
    "ClientPlatform",
    "DavePrepareTransition",
    "DaveExecuteTransition",
    "DaveTransitionReady",
    "DavePrepareEpoch",
    "DaveMlsExternalSender",
    "DaveMlsKeyPackage",
    "DaveMlsProposals",
    "DaveMlsCommitWelcome",
    "DaveMlsAnnounceCommitTransition",
    "DaveMlsWelcome",
    "DaveMlsInvalidCommitWelcome",
    "UnknownMessage",
    "GatewayMessage",
    "Envelope",
    "BINARY_OPCODES",
    "JSON_OPCODES",
    "is_binary",
    "parse",
    "parse_text",
    "parse_binary",
    "serialize",
    "check_snowflake",
    "snowflake_argument",
]

#: Frames longer than this (bytes, or characters for ``str``) are refused. Real
#: messages are far smaller (a large MLS Welcome is tens of KiB); the cap bounds
#: the memory a hostile frame can make the JSON decoder allocate.
MAX_FRAME_SIZE = 4 * 1024 * 1024

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects accepted in a text frame (Discord's use 3)."""

# No field needs more digits than a u64 (20); the cap keeps int()/float() on
# number literals cheap whatever sys.set_int_max_str_digits says.
_MAX_NUMBER_CHARS = 100

_U8 = 0xFF
_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_SECRET_KEY_SIZE = 32


class Opcode(enum.IntEnum):
    """Voice gateway opcodes (protocol.md §1.3, §5.2)."""

    IDENTIFY = 0
    SELECT_PROTOCOL = 1
    READY = 2
    HEARTBEAT = 3
    SESSION_DESCRIPTION = 4
    SPEAKING = 5
    HEARTBEAT_ACK = 6
    RESUME = 7
    HELLO = 8
    RESUMED = 9
    CLIENTS_CONNECT = 11
    CLIENT_DISCONNECT = 13
    CLIENT_FLAGS = 18
    CLIENT_PLATFORM = 20
    DAVE_PREPARE_TRANSITION = 21
    DAVE_EXECUTE_TRANSITION = 22
    DAVE_TRANSITION_READY = 23
    DAVE_PREPARE_EPOCH = 24
    DAVE_MLS_EXTERNAL_SENDER = 25
    DAVE_MLS_KEY_PACKAGE = 26
    DAVE_MLS_PROPOSALS = 27
    DAVE_MLS_COMMIT_WELCOME = 28
    DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION = 29
    DAVE_MLS_WELCOME = 30
    DAVE_MLS_INVALID_COMMIT_WELCOME = 31


class ProposalsOperation(enum.IntEnum):
    """The operation byte that starts an op 27 (MLS proposals) payload."""

    APPEND = 0
    REVOKE = 1


# -- field validation ------------------------------------------------------------------
# Each check names the field but never shows its value (it may be a token or key).

_Check: TypeAlias = Callable[[object, str], object]
"""A field's check: ``(value, name for errors)`` to the valid value, or an error."""


def _fail(what: str, exc: type[RxVoiceError] = MalformedMessage) -> NoReturn:
    raise exc(what)


def _check_int(
    value: object, what: str, lo: int, hi: int, exc: type[RxVoiceError] = MalformedMessage
) -> int:
    # bool is an int subclass, but true/false is never a valid number here.
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        _fail(f"{what} must be an integer in {lo}..{hi}", exc)
    return value


def _check_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        _fail(f"{what} must be bytes", UsageError)
    return bytes(value)


def _check_array(value: object, what: str) -> list[object]:
    # list() would happily split a str into characters, so insist on a sequence.
    if not isinstance(value, list | tuple):
        _fail(f"{what} must be a tuple or list", UsageError)
    return list(value)


def check_snowflake(value: object, what: str) -> str:
    """Return ``value`` if it is a Discord snowflake: a decimal u64 string, one spelling.

    Both gateways (voice, and the main gateway's voice dispatches) check ids
    with this one function.

    Args:
        value: The field's value.
        what: The field's name for the error (the value is never shown).

    Raises:
        MalformedMessage: If ``value`` is not such a string.
    """
    # Checking here means later int() conversions (DAVE needs the numeric
    # user id) cannot fail, and ids compare as strings.
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= 20
        or not (value.isascii() and value.isdigit())
        or (value[0] == "0" and value != "0")  # ids compare as strings: one spelling each
        or int(value) > _U64
    ):
        _fail(f"{what} must be a snowflake (a decimal u64 string)")
    return value


def snowflake_argument(value: str | int, name: str) -> str:
    """An id the caller gave (a ``str`` or an ``int``), as a snowflake string.

    Args:
        value: The id.
        name: The argument's name, for the error.

    Raises:
        UsageError: If it is not a Discord id.
    """
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        return check_snowflake(text, name)
    except MalformedMessage:
        raise UsageError(f"{name} must be a Discord id (a snowflake)") from None


def _check_number(value: object, what: str, *, positive: bool) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number) and (number > 0 if positive else number >= 0):
            return number
    bound = "> 0" if positive else ">= 0"
    _fail(f"{what} must be a finite number {bound}")


def _check_object(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        _fail(f"{what} must be a JSON object")
    return value


def _check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        _fail(f"{what} must be a string")
    return value


def _check_ip(value: object, what: str) -> str:
    # An address, never a host name: the client must not resolve what a server chose.
    text = _check_str(value, what)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        _fail(f"{what} must be an IP address")
    return text


def _check_key(value: object, what: str) -> bytes:
    if (
        not isinstance(value, list)
        or len(value) != _SECRET_KEY_SIZE
        or not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= _U8 for b in value)
    ):
        _fail(f"{what} must be an array of {_SECRET_KEY_SIZE} integers in 0..255")
    return bytes(value)


def _array_of(item: _Check) -> _Check:
    def check(value: object, what: str) -> tuple[object, ...]:
        if not isinstance(value, list):
            _fail(f"{what} must be an array")
        return tuple([item(i, what + "[]") for i in value])

    return check


def _check_operation(value: object, what: str) -> ProposalsOperation:
    return ProposalsOperation(_check_int(value, what, 0, 1))


def _key_to_json(value: object, what: str) -> list[int]:
    return list(_check_bytes(value, what))


_u16: _Check = partial(_check_int, lo=0, hi=_U16)
_u32: _Check = partial(_check_int, lo=0, hi=_U32)
_u64: _Check = partial(_check_int, lo=0, hi=_U64)
_seq_ack: _Check = partial(_check_int, lo=-1, hi=_U64)  # -1: nothing received yet


# -- the field table ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    """How one message field travels (see :func:`_json` and :func:`_big_endian`)."""

    check: _Check
    key: str = ""
    optional: bool = False
    inside: str | None = None
    to_json: _Check | None = None
    size: int = 0  # binary: the bytes of a big-endian integer; 0 for the rest of the payload
    # Filled in from the dataclass field by _build_table().
    name: str = ""
    what: str = ""


def _json(
    check: _Check,
    *,
    key: str = "",
    optional: bool = False,
    inside: str | None = None,
    to_json: _Check | None = None,
) -> dict[str, _Field]:
    """Describe a message field, as the dataclass field's ``metadata``.

    Args:
        check: Validates and converts the JSON value; raises MalformedMessage.
        key: The JSON key, when it is not the field's name.
        optional: Whether the key may be missing or null (the field then takes
            its default); a ``None`` field is left out of the frame.
        inside: The key of the nested object that holds this one.
        to_json: Converts the field's value to JSON (a tuple to a list, ...);
            raises UsageError. Without it the value is written as it is.
    """
    return {"wire": _Field(check, key, optional, inside, to_json)}


def _big_endian(size: int, check: _Check) -> dict[str, _Field]:
    """Describe a binary message's leading field: an unsigned ``size``-byte integer."""
    return {"wire": _Field(check, size=size)}


#: A binary message's last field: the rest of the payload.
_REST = {"wire": _Field(_check_bytes)}


def _build_table(cls: type) -> tuple[_Field, ...]:
    table = [
        replace(
            spec,
            key=spec.key or f.name,
            name=f.name,
            what=f"{cls.__name__}.{spec.key or f.name}",
        )
        for f in fields(cls)
        for spec in [f.metadata["wire"]]
    ]
    # Keys of nested objects come after the flat keys, on the wire and when checked.
    return tuple(sorted(table, key=lambda spec: spec.inside is not None))


class _Message:
    """A known message: its opcode and the field table its frames are read and written by."""

    __slots__ = ()
    op: ClassVar[Opcode]
    _table: ClassVar[tuple[_Field, ...]] = ()


class _JsonMessage(_Message):
    """A message sent as a JSON text frame, mapped to and from ``d`` by its field table."""

    __slots__ = ()
    #: Whether ``d`` may be the first field's bare integer (heartbeats before v8).
    _bare: ClassVar[bool] = False


def _to_d(message: _JsonMessage) -> object:
    """Return the frame's ``d`` for ``message``; raise MalformedMessage if a field is invalid."""
    if not message._table:
        return None
    d: dict[str, object] = {}
    nested: dict[str, dict[str, object]] = {}
    for spec in message._table:
        value = getattr(message, spec.name)
        if value is None and spec.optional:
            continue
        if spec.to_json is not None:
            value = spec.to_json(value, spec.what)
        (d if spec.inside is None else nested.setdefault(spec.inside, {}))[spec.key] = value
    d.update(nested)
    _from_d(type(message), d)  # what we send must parse back
    return d


def _from_d(cls: type[_JsonMessage], d: object) -> _JsonMessage:
    """Build a ``cls`` from a frame's ``d``; raise MalformedMessage if invalid."""
    make: Callable[..., _JsonMessage] = cls
    if not cls._table:
        return make()  # d carries nothing; whatever it holds is ignored
    if cls._bare and isinstance(d, int) and not isinstance(d, bool):
        return make(cls._table[0].check(d, f"{cls.__name__}.d"))
    o = _check_object(d, f"{cls.__name__}: d")
    values: dict[str, object] = {}
    for spec in cls._table:
        obj = o
        if spec.inside is not None:
            what = f"{cls.__name__}.{spec.inside}"
            obj = _check_object(_get(o, spec.inside, what), what)
        if not spec.optional:
            values[spec.name] = spec.check(_get(obj, spec.key, spec.what), spec.what)
        elif (value := obj.get(spec.key)) is not None:
            values[spec.name] = spec.check(value, spec.what)
    return make(**values)


def _get(o: dict[str, object], key: str, what: str) -> object:
    if key not in o:
        _fail(f"{what} is missing")
    return o[key]


class _BinaryMessage(_Message):
    """A DAVE message sent as a binary frame: big-endian integers, then the rest."""

    __slots__ = ()


def _to_payload(message: _BinaryMessage) -> bytes:
    """Return the bytes after the opcode; raise MalformedMessage if a field is invalid."""
    parts: list[bytes] = []
    for spec in message._table:
        value = spec.check(getattr(message, spec.name), spec.what)
        parts.append(
            value.to_bytes(spec.size, "big") if isinstance(value, int) else cast("bytes", value)
        )
    return b"".join(parts)


def _from_payload(cls: type[_BinaryMessage], payload: bytes) -> _BinaryMessage:
    """Build a ``cls`` from the bytes after the opcode; raise MalformedMessage if invalid."""
    values: list[object] = []
    for spec in cls._table:
        if not spec.size:
            values.append(payload)
            break
        if len(payload) < spec.size:
            _fail(f"{cls.__name__}: the {spec.size}-byte {spec.name} is missing")
        values.append(spec.check(int.from_bytes(payload[: spec.size], "big"), spec.what))
        payload = payload[spec.size :]
    make: Callable[..., _BinaryMessage] = cls
    return make(*values)


_M = TypeVar("_M", bound=_Message)
_JSON_TYPES: dict[int, type[_JsonMessage]] = {}
_BINARY_TYPES: dict[int, type[_BinaryMessage]] = {}


def _register(cls: type[_M]) -> type[_M]:
    """Build a message class's field table and add it to the opcode tables."""
    cls._table = _build_table(cls)
    if issubclass(cls, _JsonMessage):
        _JSON_TYPES[cls.op] = cls
    elif issubclass(cls, _BinaryMessage):
        _BINARY_TYPES[cls.op] = cls
    return cls


# -- JSON messages -----------------------------------------------------------------------


@_register
@dataclass(frozen=True, slots=True)
class Identify(_JsonMessage):
    """Op 0 (C→S): open a new session.

    Attributes:
        server_id: The guild id (or channel id for DMs).
        user_id: The bot's user id.
        session_id: From the main gateway's VOICE_STATE_UPDATE.
        token: From VOICE_SERVER_UPDATE; never shown in the repr.
        max_dave_protocol_version: Highest DAVE version supported; 0 means none.
    """

    op: ClassVar[Opcode] = Opcode.IDENTIFY
    server_id: str = field(metadata=_json(check_snowflake))
    user_id: str = field(metadata=_json(check_snowflake))
    session_id: str = field(metadata=_json(_check_str))
    token: str = field(repr=False, metadata=_json(_check_str))
    max_dave_protocol_version: int = field(default=0, metadata=_json(_u16, optional=True))


@_register
@dataclass(frozen=True, slots=True)
class SelectProtocol(_JsonMessage):
    """Op 1 (C→S): the address found by IP discovery and the chosen encryption mode."""

    op: ClassVar[Opcode] = Opcode.SELECT_PROTOCOL
    address: str = field(metadata=_json(_check_str, inside="data"))
    port: int = field(metadata=_json(_u16, inside="data"))
    mode: str = field(metadata=_json(_check_str, inside="data"))
    protocol: str = field(default="udp", metadata=_json(_check_str))


@_register
@dataclass(frozen=True, slots=True)
class Ready(_JsonMessage):
    """Op 2 (S→C): our SSRC, the UDP endpoint and the offered encryption modes.

    ``heartbeat_interval`` here is bogus (protocol.md §1.3); use :class:`Hello`'s.
    Extra keys such as ``experiments`` and ``streams`` are ignored.
    """

    op: ClassVar[Opcode] = Opcode.READY
    ssrc: int = field(metadata=_json(_u32))
    ip: str = field(metadata=_json(_check_ip))
    port: int = field(metadata=_json(_u16))
    modes: tuple[str, ...] = field(metadata=_json(_array_of(_check_str), to_json=_check_array))
    heartbeat_interval: float | None = field(
        default=None, metadata=_json(partial(_check_number, positive=False), optional=True)
    )


@_register
@dataclass(frozen=True, slots=True)
class Heartbeat(_JsonMessage):
    """Op 3 (C→S): keep the session alive.

    v8 sends ``{"t": nonce, "seq_ack": n}``; before v8 ``d`` was the bare nonce,
    which :func:`parse` still accepts.

    Attributes:
        nonce: Any integer (clients use the time in ms); the ACK echoes it.
        seq_ack: The last ``seq`` received (-1 or ``None`` if none yet).
    """

    op: ClassVar[Opcode] = Opcode.HEARTBEAT
    _bare: ClassVar[bool] = True
    nonce: int = field(metadata=_json(_u64, key="t"))
    seq_ack: int | None = field(default=None, metadata=_json(_seq_ack, optional=True))


@_register
@dataclass(frozen=True, slots=True)
class SessionDescription(_JsonMessage):
    """Op 4 (S→C): the transport encryption mode and key, and the DAVE version.

    Attributes:
        mode: The encryption mode, e.g. ``aead_aes256_gcm_rtpsize``.
        secret_key: 32 bytes; never shown in the repr.
        dave_protocol_version: The starting DAVE version; 0 = transport-only.
    """

    op: ClassVar[Opcode] = Opcode.SESSION_DESCRIPTION
    mode: str = field(metadata=_json(_check_str))
    secret_key: bytes = field(repr=False, metadata=_json(_check_key, to_json=_key_to_json))
    dave_protocol_version: int = field(default=0, metadata=_json(_u16, optional=True))


@_register
@dataclass(frozen=True, slots=True)
class Speaking(_JsonMessage):
    """Op 5 (both ways): speaking flags for an SSRC.

    The client sends ``{speaking, delay, ssrc}``; the server sends
    ``{speaking, ssrc, user_id}``, the only way to map an SSRC to a user.
    Flags: 1 microphone, 2 soundshare, 4 priority.
    """

    op: ClassVar[Opcode] = Opcode.SPEAKING
    speaking: int = field(metadata=_json(_u32))
    ssrc: int = field(metadata=_json(_u32))
    user_id: str | None = field(default=None, metadata=_json(check_snowflake, optional=True))
    delay: int | None = field(default=None, metadata=_json(_u32, optional=True))


@_register
@dataclass(frozen=True, slots=True)
class HeartbeatAck(_JsonMessage):
    """Op 6 (S→C): ``{"t": nonce}`` echoing a heartbeat (a bare int before v8)."""

    op: ClassVar[Opcode] = Opcode.HEARTBEAT_ACK
    _bare: ClassVar[bool] = True
    nonce: int = field(metadata=_json(_u64, key="t"))


@_register
@dataclass(frozen=True, slots=True)
class Resume(_JsonMessage):
    """Op 7 (C→S): resume a session on a new WebSocket (token not in the repr)."""

    op: ClassVar[Opcode] = Opcode.RESUME
    server_id: str = field(metadata=_json(check_snowflake))
    session_id: str = field(metadata=_json(_check_str))
    token: str = field(repr=False, metadata=_json(_check_str))
    seq_ack: int | None = field(default=None, metadata=_json(_seq_ack, optional=True))


@_register
@dataclass(frozen=True, slots=True)
class Hello(_JsonMessage):
    """Op 8 (S→C): the heartbeat interval in milliseconds and the gateway version ``v``."""

    op: ClassVar[Opcode] = Opcode.HELLO
    # Zero would make the heartbeat loop spin, so it is refused too.
    heartbeat_interval: float = field(metadata=_json(partial(_check_number, positive=True)))
    version: int | None = field(default=None, metadata=_json(_u32, key="v", optional=True))


@_register
@dataclass(frozen=True, slots=True)
class Resumed(_JsonMessage):
    """Op 9 (S→C): the resume succeeded; buffered messages follow. ``d`` is null."""

    op: ClassVar[Opcode] = Opcode.RESUMED


@_register
@dataclass(frozen=True, slots=True)
class ClientsConnect(_JsonMessage):
    """Op 11 (S→C): users in the call; DAVE accepts Add proposals only for them."""

    op: ClassVar[Opcode] = Opcode.CLIENTS_CONNECT
    user_ids: tuple[str, ...] = field(
        metadata=_json(_array_of(check_snowflake), to_json=_check_array)
    )


@_register
@dataclass(frozen=True, slots=True)
class ClientDisconnect(_JsonMessage):
    """Op 13 (S→C): a user left the call."""

    op: ClassVar[Opcode] = Opcode.CLIENT_DISCONNECT
    user_id: str = field(metadata=_json(check_snowflake))


@_register
@dataclass(frozen=True, slots=True)
class ClientFlags(_JsonMessage):
    """Op 18 (S→C, unofficial): a user's flags (1 clips, 2 recording, 4 viewer clips)."""

    op: ClassVar[Opcode] = Opcode.CLIENT_FLAGS
    user_id: str = field(metadata=_json(check_snowflake))
    flags: int = field(metadata=_json(_u32))


@_register
@dataclass(frozen=True, slots=True)
class ClientPlatform(_JsonMessage):
    """Op 20 (S→C, unofficial): a user's platform (0 desktop, 1 mobile, 2 Xbox, 3 PS)."""

    op: ClassVar[Opcode] = Opcode.CLIENT_PLATFORM
    user_id: str = field(metadata=_json(check_snowflake))
    platform: int = field(metadata=_json(_u32))


@_register
@dataclass(frozen=True, slots=True)
class DavePrepareTransition(_JsonMessage):
    """Op 21 (S→C): a protocol transition (e.g. a downgrade to 0) is coming."""

    op: ClassVar[Opcode] = Opcode.DAVE_PREPARE_TRANSITION
    protocol_version: int = field(metadata=_json(_u16))
    transition_id: int = field(metadata=_json(_u16))


@_register
@dataclass(frozen=True, slots=True)
class DaveExecuteTransition(_JsonMessage):
    """Op 22 (S→C): switch to the prepared transition now."""

    op: ClassVar[Opcode] = Opcode.DAVE_EXECUTE_TRANSITION
    transition_id: int = field(metadata=_json(_u16))


@_register
@dataclass(frozen=True, slots=True)
class DaveTransitionReady(_JsonMessage):
    """Op 23 (C→S): this client is ready for the transition."""

    op: ClassVar[Opcode] = Opcode.DAVE_TRANSITION_READY
    transition_id: int = field(metadata=_json(_u16))


@_register
@dataclass(frozen=True, slots=True)
class DavePrepareEpoch(_JsonMessage):
    """Op 24 (S→C): a new MLS epoch (``epoch == 1`` means a new group).

    ``transition_id`` is in the API prose but not in the whitepaper example
    (protocol.md §8.3), so it is optional.
    """

    op: ClassVar[Opcode] = Opcode.DAVE_PREPARE_EPOCH
    protocol_version: int = field(metadata=_json(_u16))
    epoch: int = field(metadata=_json(_u64))
    transition_id: int | None = field(default=None, metadata=_json(_u16, optional=True))


@_register
@dataclass(frozen=True, slots=True)
class DaveMlsInvalidCommitWelcome(_JsonMessage):
    """Op 31 (C→S): the commit or welcome of this transition could not be processed."""

    op: ClassVar[Opcode] = Opcode.DAVE_MLS_INVALID_COMMIT_WELCOME
    transition_id: int = field(metadata=_json(_u16))


# -- binary messages (protocol.md §5.5) --------------------------------------------------


@_register
@dataclass(frozen=True, slots=True)
class DaveMlsExternalSender(_BinaryMessage):
    """Op 25 (S→C): the ExternalSender structure, fed unchanged to ``set_external_sender``."""

    op: ClassVar[Opcode] = Opcode.DAVE_MLS_EXTERNAL_SENDER
    payload: bytes = field(metadata=_REST)


@_register
@dataclass(frozen=True, slots=True)
class DaveMlsKeyPackage(_BinaryMessage):
    """Op 26 (C→S): a bare MLS KeyPackage (not MLSMessage-wrapped)."""

    op: ClassVar[Opcode] = Opcode.DAVE_MLS_KEY_PACKAGE
    key_package: bytes = field(metadata=_REST)


@_register
@dataclass(frozen=True, slots=True)
class DaveMlsProposals(_BinaryMessage):
    """Op 27 (S→C): proposals to append or revoke.

    Attributes:
        operation: The leading operation byte.
        payload: The rest of the frame: the proposal (or ProposalRef) vector
            *including* its varint length prefix, exactly what davey's
            ``process_proposals`` takes.
    """

    op: ClassVar[Opcode] = Opcode.DAVE_MLS_PROPOSALS
    operation: ProposalsOperation = field(metadata=_big_endian(1, _check_operation))
    payload: bytes = field(metadata=_REST)


@_register
@dataclass(frozen=True, slots=True)
class DaveMlsCommitWelcome(_BinaryMessage):
    """Op 28 (C→S): a commit MLSMessage, then an optional bare Welcome, unsplit."""

    op: ClassVar[Opcode] = Opcode.DAVE_MLS_COMMIT_WELCOME
    payload: bytes = field(metadata=_REST)


@_register
@dataclass(frozen=True, slots=True)
class DaveMlsAnnounceCommitTransition(_BinaryMessage):
    """Op 29 (S→C): ``u16 BE transition_id | commit MLSMessage``."""

    op: ClassVar[Opcode] = Opcode.DAVE_MLS_ANNOUNCE_COMMIT_TRANSITION
    transition_id: int = field(metadata=_big_endian(2, _u16))
    commit: bytes = field(metadata=_REST)


@_register
@dataclass(frozen=True, slots=True)
class DaveMlsWelcome(_BinaryMessage):
    """Op 30 (S→C): ``u16 BE transition_id | bare Welcome``."""

    op: ClassVar[Opcode] = Opcode.DAVE_MLS_WELCOME
    transition_id: int = field(metadata=_big_endian(2, _u16))
    welcome: bytes = field(metadata=_REST)


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A message with an opcode this module does not know; the client ignores it.

    Attributes:
        op: The opcode (0..255).
        data: For a text frame, its ``d`` as decoded JSON.
        payload: For a binary frame, the bytes after the opcode; ``None`` for text.

    Serialising an ``UnknownMessage`` whose ``op`` *is* known is allowed (a test
    server can send deliberately odd frames); such a frame parses back to the
    known message type, or fails to parse.
    """

    op: int
    data: object = None
    payload: bytes | None = None


GatewayMessage: TypeAlias = (
    Identify
    | SelectProtocol
    | Ready
    | Heartbeat
    | SessionDescription
    | Speaking
    | HeartbeatAck
    | Resume
    | Hello
    | Resumed
    | ClientsConnect
    | ClientDisconnect
    | ClientFlags
    | ClientPlatform
    | DavePrepareTransition
    | DaveExecuteTransition
    | DaveTransitionReady
    | DavePrepareEpoch
    | DaveMlsExternalSender
    | DaveMlsKeyPackage
    | DaveMlsProposals
    | DaveMlsCommitWelcome
    | DaveMlsAnnounceCommitTransition
    | DaveMlsWelcome
    | DaveMlsInvalidCommitWelcome
    | UnknownMessage
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed frame: the message and the server's sequence number, if any.

    Attributes:
        message: The message.
        seq: The top-level JSON ``seq`` or the binary frame's u16 seq; ``None``
            when the frame had none (client frames, op 6, op 8, ...).
    """

    message: GatewayMessage
    seq: int | None = None


#: Opcodes sent as JSON text frames.
JSON_OPCODES: frozenset[Opcode] = frozenset(Opcode(op) for op in _JSON_TYPES)
#: Opcodes sent as binary frames (the DAVE MLS ops 25-30).
BINARY_OPCODES: frozenset[Opcode] = frozenset(Opcode(op) for op in _BINARY_TYPES)


# -- frames ------------------------------------------------------------------------------


def _parse_int(text: str) -> int:
    if len(text) > _MAX_NUMBER_CHARS:
        _fail("JSON number too long", MalformedMessage)
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > _MAX_NUMBER_CHARS:
        _fail("JSON number too long", MalformedMessage)
    return float(text)


def _parse_constant(name: str) -> NoReturn:
    _fail(f"JSON constant {name} is not allowed", MalformedMessage)


# Hooks run inside the decoder, so their MalformedMessage propagates unchanged.
_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
)


def _check_size(size: int) -> None:
    if size > MAX_FRAME_SIZE:
        _fail(f"frame of {size} bytes exceeds the {MAX_FRAME_SIZE}-byte limit", MalformedMessage)


def _check_depth(frame: object) -> None:
    # Deeper data would parse, but a subscriber's repr() or json.dumps() of
    # an UnknownMessage could then hit the recursion limit.
    level: list[object] = [frame]
    for _ in range(MAX_JSON_DEPTH):
        level = [
            child
            for value in level
            if isinstance(value, dict | list)
            for child in (value.values() if isinstance(value, dict) else value)
        ]
        if not level:
            return
    _fail(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", MalformedMessage)


def parse_text(text: str | bytes) -> Envelope:
    """Parse a JSON text frame ``{"op", "d", "seq"?}``.

    Args:
        text: The frame as ``str``, or as UTF-8 ``bytes``.

    Returns:
        The message (an :class:`UnknownMessage` for opcodes not known here) and
        the frame's top-level ``seq``.

    Raises:
        MalformedMessage: If the frame is not valid UTF-8 or JSON, is too large or
            too deeply nested, carries a binary-only opcode, or a field is
            missing, of the wrong type or out of range.
        UsageError: If ``text`` is neither ``str`` nor bytes.
    """
    if isinstance(text, bytes | bytearray | memoryview):
        _check_size(len(text))
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            _fail(f"text frame is not valid UTF-8 (at byte {exc.start})", MalformedMessage)
    elif not isinstance(text, str):
        _fail(f"parse_text() takes str or bytes, not {type(text).__name__}", UsageError)
    _check_size(len(text))
    try:
        frame = _DECODER.decode(text)
    except ValueError as exc:  # JSONDecodeError; its message never quotes the input
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "invalid number"
        _fail(f"invalid JSON: {msg}", MalformedMessage)
    except RecursionError:
        _fail("JSON nested too deeply", MalformedMessage)
    _check_depth(frame)

    if not isinstance(frame, dict):
        _fail("a text frame must be a JSON object", MalformedMessage)
    op = _check_int(frame.get("op"), "frame op", 0, _U8)
    raw_seq = frame.get("seq")
    seq = None if raw_seq is None else _check_int(raw_seq, "frame seq", 0, _U64)
    d = frame.get("d")
    message_type = _JSON_TYPES.get(op)
    if message_type is not None:
        message = cast("GatewayMessage", _from_d(message_type, d))
    elif op in _BINARY_TYPES:
        _fail(f"op {op} must arrive in a binary frame, not a text frame", MalformedMessage)
    else:
        message = UnknownMessage(op=op, data=d)
    return Envelope(message, seq)


def parse_binary(data: bytes, *, from_server: bool) -> Envelope:
    """Parse a binary frame.

    Args:
        data: The frame.
        from_server: ``True`` for the server→client layout
            ``seq u16 BE | op u8 | payload``; ``False`` for the client→server
            layout ``op u8 | payload``.

    Returns:
        The message (an :class:`UnknownMessage` for opcodes not known here) and
        the seq (``None`` for client frames).

    Raises:
        MalformedMessage: If the frame is truncated or too large, carries a
            JSON opcode, or its payload is invalid for the opcode.
        UsageError: If ``data`` is not bytes.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        _fail(f"parse_binary() takes bytes, not {type(data).__name__}", UsageError)
    data = bytes(data)
    _check_size(len(data))
    seq: int | None = None
    if from_server:
        if len(data) < 3:
            _fail("binary frame too short for its seq (2 bytes) and opcode", MalformedMessage)
        seq, op = struct.unpack_from(">HB", data)
        payload = data[3:]
    else:
        if not data:
            _fail("binary frame is empty: the opcode is missing", MalformedMessage)
        op, payload = data[0], data[1:]

    message_type = _BINARY_TYPES.get(op)
    if message_type is not None:
        message = cast("GatewayMessage", _from_payload(message_type, payload))
    elif op in _JSON_TYPES:
        _fail(f"op {op} must arrive in a text frame, not a binary frame", MalformedMessage)
    else:
        message = UnknownMessage(op=op, payload=payload)
    return Envelope(message, seq)


def parse(frame: str | bytes, *, from_server: bool) -> Envelope:
    """Parse a frame as the WebSocket hands it over: ``str`` is text, ``bytes`` binary.

    Args:
        frame: The frame.
        from_server: Which binary layout to expect (see :func:`parse_binary`).
            Text frames look the same both ways.

    Returns:
        The parsed :class:`Envelope`.

    Raises:
        MalformedMessage: If the frame is malformed.
        UsageError: If ``frame`` is neither ``str`` nor bytes.
    """
    if isinstance(frame, str):
        return parse_text(frame)
    return parse_binary(frame, from_server=from_server)


def is_binary(message: GatewayMessage) -> bool:
    """Return whether ``message`` travels in a binary frame (DAVE ops 25-30).

    An :class:`UnknownMessage` is binary when it has a ``payload``.
    """
    if isinstance(message, UnknownMessage):
        return message.payload is not None
    return isinstance(message, _BinaryMessage)


def _text_frame(op: int, d: object, seq: int | None) -> str:
    frame: dict[str, object] = {"op": int(op), "d": d}
    if seq is not None:
        frame["seq"] = _check_int(seq, "seq", 0, _U64, UsageError)
    try:
        return json.dumps(frame, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        _fail("the message data cannot be encoded as JSON", UsageError)


def _binary_frame(op: int, payload: bytes, seq: int | None) -> bytes:
    if seq is None:
        return bytes([op]) + payload
    return struct.pack(">HB", _check_int(seq, "seq", 0, _U16, UsageError), op) + payload


def serialize(message: GatewayMessage, *, seq: int | None = None) -> str | bytes:
    """Encode a message as a frame.

    Args:
        message: The message.
        seq: For JSON messages, a top-level ``"seq"`` to add (server side). For
            binary messages, given means the server→client layout
            ``seq u16 BE | op | payload``, omitted the client→server ``op | payload``.

    Returns:
        ``str`` (a compact JSON text frame) or ``bytes`` (a binary frame), as
        :func:`is_binary` says.

    Raises:
        UsageError: If a field is invalid (wrong type, out of range, a key that
            is not 32 bytes, ...), or ``seq`` is out of range.
    """
    try:  # one set of rules for both directions: a field that would not parse is misused
        if isinstance(message, _JsonMessage):
            return _text_frame(message.op, _to_d(message), seq)
        if isinstance(message, _BinaryMessage):
            return _binary_frame(message.op, _to_payload(message), seq)
    except MalformedMessage as exc:
        raise UsageError(str(exc)) from None
    if not isinstance(message, UnknownMessage):
        _fail(f"not a gateway message: {type(message).__name__}", UsageError)
    op = _check_int(message.op, "UnknownMessage.op", 0, _U8, UsageError)
    if message.payload is None:
        return _text_frame(op, message.data, seq)
    if message.data is not None:
        _fail("UnknownMessage: give data (text) or payload (binary), not both", UsageError)
    return _binary_frame(op, _check_bytes(message.payload, "UnknownMessage.payload"), seq)
