"""What rxvoice puts in NATS messages: one binary frame layout and one JSON control layout.

Sans-I/O: bytes in, values out; no asyncio, no reactivex, no nats-py.

**Audio** (:class:`VoicePacket`), one message per received frame, big-endian,
version 1::

    offset size field
    ------ ---- -----------------------------------------------------------------
         0    1 layout version (1)
         1    1 flags: bit 0 = the user is known; the other bits are 0
         2    1 DAVE protocol version when the frame was emitted (0 = off)
         3    8 guild id (u64 snowflake)
        11    8 voice channel id (u64 snowflake)
        19    8 user id (u64 snowflake; 0 when flag bit 0 is clear)
        27    8 DAVE MLS epoch when the frame was emitted (0 = no group)
        35    8 arrival time: the publisher's wall clock, microseconds since
                1970-01-01 UTC
        43   12 RTP header as rxvoice emits it: 0x80, marker|payload type,
                sequence (u16), timestamp (u32), SSRC (u32)
        55    n Opus payload, every encryption layer removed

Bytes 43 onwards are :attr:`rxvoice.events.AudioFrame.frame` verbatim, so a
consumer rebuilds the frame without copying it twice. 55 bytes of overhead
per frame (a 20 ms voice frame is typically 60-160 bytes of Opus).

**Control** (:class:`ControlMessage`), one compact JSON object per lifecycle
event (a low rate: speaking changes, joins, leaves)::

    {"v":1,"type":"speaking","guild_id":"…","channel_id":"…","at":1764950000.123,
     "user_id":"…","ssrc":1234,"flags":1}

``type`` and its fields:

============  ===========================================================
type          fields
============  ===========================================================
speaking      ``user_id``, ``ssrc``, ``flags`` (op 5)
join          ``user_id`` (op 11)
leave         ``user_id`` (op 13)
ssrc          ``user_id``, ``ssrc``, ``previous`` (a user's SSRC changed)
session       ``user_id`` (the bot), ``ssrc`` (a new voice session is ready)
state         ``state`` (a :class:`~rxvoice.events.ConnectionState` value)
dave          ``epoch``, ``protocol_version``, ``transition_id``,
              ``members``, ``privacy_code``
disconnected  ``code``, ``will_reconnect``, ``reason``
============  ===========================================================

``at`` is the publisher's wall clock in seconds. Parsers raise only
:class:`~rxvoice.errors.MalformedPacket` (audio) and
:class:`~rxvoice.errors.MalformedMessage` (control) on bad input.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from rxvoice.errors import MalformedMessage, MalformedPacket, UsageError
from rxvoice.events import (
    AudioFrame,
    ClientConnect,
    ClientDisconnect,
    ConnectionState,
    DaveEpochTransition,
    Disconnected,
    SpeakingEvent,
    SpeakingFlags,
)
from rxvoice.protocol.gateway import check_snowflake

__all__ = [
    "HEADER_SIZE",
    "LAYOUT_VERSION",
    "ControlEvent",
    "ControlMessage",
    "SessionStart",
    "SsrcChange",
    "StateChange",
    "VoicePacket",
]

LAYOUT_VERSION: Final = 1
"""The version byte this module writes and the only one it reads."""

_HEAD = struct.Struct(">BBBQQQQQ")
HEADER_SIZE: Final = _HEAD.size  # 43
_RTP_SIZE = 12
_RTP_FIRST_BYTE = 0x80  # version 2, no padding, no extension, no CSRCs
_USER_KNOWN = 0x01
_U64 = (1 << 64) - 1
_MAX_CONTROL = 65_536  # bytes; a control message is a few hundred


def _snowflake_int(value: str, what: str) -> int:
    try:
        return int(check_snowflake(value, what))
    except MalformedMessage as exc:
        raise UsageError(f"{exc}, got {value!r}") from None


@dataclass(frozen=True, slots=True)
class VoicePacket:
    """One received audio frame with the context a consumer in another process needs.

    Attributes:
        guild_id: The guild of the call.
        channel_id: The voice channel.
        user_id: The speaking user, ``None`` when the SSRC was not attributed.
        received_at: When the frame arrived, on the publisher's wall clock
            (seconds since the Unix epoch, microsecond resolution on the wire).
        dave_epoch: The connection's DAVE MLS epoch when the frame was emitted.
        dave_protocol_version: The DAVE protocol version then (0: DAVE off).
        frame: The 12-byte RTP header and the Opus payload, as
            :attr:`rxvoice.events.AudioFrame.frame`.
    """

    guild_id: str
    channel_id: str
    user_id: str | None
    received_at: float
    dave_epoch: int
    dave_protocol_version: int
    frame: bytes = field(repr=False)

    @property
    def ssrc(self) -> int:
        """The RTP SSRC."""
        return int.from_bytes(self.frame[8:12], "big")

    @property
    def sequence(self) -> int:
        """The RTP sequence number."""
        return int.from_bytes(self.frame[2:4], "big")

    @property
    def timestamp(self) -> int:
        """The RTP timestamp (48 kHz units)."""
        return int.from_bytes(self.frame[4:8], "big")

    @property
    def opus(self) -> bytes:
        """The Opus payload."""
        return self.frame[_RTP_SIZE:]

    def to_frame(self, received_at: float) -> AudioFrame:
        """The :class:`~rxvoice.events.AudioFrame` this packet carries.

        Args:
            received_at: Its arrival time on the receiving clock (see
                :func:`rxvoice.nats.to_frames` for the mapping from the wall clock).
        """
        return AudioFrame.from_packet(self.frame, user_id=self.user_id, received_at=received_at)

    def serialize(self) -> bytes:
        """Return the message bytes (layout version 1, see the module docstring).

        Raises:
            UsageError: A field does not fit the layout (not a u64 snowflake,
                a negative time, a frame without its RTP header).
        """
        frame = self.frame
        if len(frame) < _RTP_SIZE or frame[0] != _RTP_FIRST_BYTE:
            raise UsageError("frame must start with a plain 12-byte RTP header (0x80 …)")
        user = 0 if self.user_id is None else _snowflake_int(self.user_id, "user_id")
        micros = round(self.received_at * 1e6) if math.isfinite(self.received_at) else -1
        try:
            head = _HEAD.pack(
                LAYOUT_VERSION,
                0 if self.user_id is None else _USER_KNOWN,
                self.dave_protocol_version,
                _snowflake_int(self.guild_id, "guild_id"),
                _snowflake_int(self.channel_id, "channel_id"),
                user,
                self.dave_epoch,
                micros,
            )
        except struct.error as exc:
            raise UsageError(f"a field is out of range for the NATS layout: {exc}") from None
        return head + frame

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> VoicePacket:
        """Read a message written by :meth:`serialize`.

        Args:
            data: The NATS message payload.

        Returns:
            The packet.

        Raises:
            MalformedPacket: The payload is too short, of another layout
                version, has unknown flags, or does not carry an RTP frame.
        """
        if len(data) < HEADER_SIZE + _RTP_SIZE:
            raise MalformedPacket(f"NATS voice message too short: {len(data)} bytes")
        version, flags, dave_version, guild, channel, user, epoch, micros = _HEAD.unpack_from(data)
        if version != LAYOUT_VERSION:
            raise MalformedPacket(f"NATS voice message of layout version {version}, not 1")
        if flags & ~_USER_KNOWN:
            raise MalformedPacket(f"NATS voice message with unknown flags {flags:#04x}")
        known = bool(flags & _USER_KNOWN)
        if not known and user:
            raise MalformedPacket("NATS voice message has a user id but no user flag")
        frame = bytes(data[HEADER_SIZE:])
        if frame[0] != _RTP_FIRST_BYTE:
            raise MalformedPacket(f"NATS voice message frame starts with {frame[0]:#04x}")
        return cls(
            str(guild),
            str(channel),
            str(user) if known else None,
            micros / 1e6,
            epoch,
            dave_version,
            frame,
        )


# -- control messages ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SsrcChange:
    """A user's SSRC changed (seen in op 5 with an SSRC other than the user's last).

    Attributes:
        user_id: The user.
        ssrc: The new SSRC.
        previous: The SSRC before, ``None`` for the user's first.
    """

    user_id: str
    ssrc: int
    previous: int | None


@dataclass(frozen=True, slots=True)
class SessionStart:
    """A new voice session became ready (Connection ``on_ready``).

    Attributes:
        user_id: The bot's user id, when known.
        ssrc: The bot's SSRC in this session.
    """

    user_id: str | None
    ssrc: int | None


@dataclass(frozen=True, slots=True)
class StateChange:
    """The connection moved to another :class:`~rxvoice.events.ConnectionState`."""

    state: ConnectionState


ControlEvent: TypeAlias = (
    SpeakingEvent
    | ClientConnect
    | ClientDisconnect
    | SsrcChange
    | SessionStart
    | StateChange
    | DaveEpochTransition
    | Disconnected
)

# Each type: its name on the wire and its fields with their JSON kinds.
_Kind: TypeAlias = str  # "str", "str?", "int", "int?", "bool", "strs", "flags", "state"
_SCHEMA: dict[type[Any], tuple[str, dict[str, _Kind]]] = {
    SpeakingEvent: ("speaking", {"user_id": "str", "ssrc": "int", "flags": "flags"}),
    ClientConnect: ("join", {"user_id": "str"}),
    ClientDisconnect: ("leave", {"user_id": "str"}),
    SsrcChange: ("ssrc", {"user_id": "str", "ssrc": "int", "previous": "int?"}),
    SessionStart: ("session", {"user_id": "str?", "ssrc": "int?"}),
    StateChange: ("state", {"state": "state"}),
    DaveEpochTransition: (
        "dave",
        {
            "epoch": "int",
            "protocol_version": "int",
            "transition_id": "int",
            "members": "strs",
            "privacy_code": "str?",
        },
    ),
    Disconnected: ("disconnected", {"code": "int?", "will_reconnect": "bool", "reason": "str"}),
}
_BY_NAME = {name: (cls, fields) for cls, (name, fields) in _SCHEMA.items()}


def _to_json(kind: _Kind, value: Any) -> Any:
    if kind == "flags":
        return int(value)
    if kind == "state":
        return value.value
    if kind == "strs":
        return list(value)
    return value


def _from_json(kind: _Kind, value: Any, what: str) -> Any:
    optional = kind.endswith("?")
    if optional and value is None:
        return None
    base = kind.rstrip("?")
    if base in ("int", "flags"):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64:
            raise MalformedMessage(f"control message: {what} must be a non-negative integer")
        return SpeakingFlags(value) if base == "flags" else value
    if base == "str":
        if not isinstance(value, str):
            raise MalformedMessage(f"control message: {what} must be a string")
        return value
    if base == "bool":
        if not isinstance(value, bool):
            raise MalformedMessage(f"control message: {what} must be a boolean")
        return value
    if base == "strs":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise MalformedMessage(f"control message: {what} must be a list of strings")
        return tuple(value)
    try:  # "state"
        return ConnectionState(value)
    except ValueError:
        raise MalformedMessage(f"control message: unknown state {value!r}") from None


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """One lifecycle event of a connection, as published on the control subject.

    Attributes:
        guild_id: The guild of the call.
        channel_id: The voice channel.
        at: When it happened, on the publisher's wall clock (Unix seconds).
        event: The event: the same dataclasses a :class:`rxvoice.Connection`
            emits, plus :class:`SsrcChange`, :class:`SessionStart` and
            :class:`StateChange`.
    """

    guild_id: str
    channel_id: str
    at: float
    event: ControlEvent

    @property
    def type(self) -> str:
        """The event's name on the wire (``"speaking"``, ``"join"``, …)."""
        return _SCHEMA[type(self.event)][0]

    def serialize(self) -> bytes:
        """Return compact JSON (see the module docstring).

        Raises:
            UsageError: The event is not one of :data:`ControlEvent`.
        """
        schema = _SCHEMA.get(type(self.event))
        if schema is None:
            raise UsageError(f"not a control event: {type(self.event).__name__}")
        name, fields = schema
        body: dict[str, Any] = {
            "v": LAYOUT_VERSION,
            "type": name,
            "guild_id": self.guild_id,
            "channel_id": self.channel_id,
            "at": round(self.at, 6),
        }
        for key, kind in fields.items():
            body[key] = _to_json(kind, getattr(self.event, key))
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> ControlMessage:
        """Read a message written by :meth:`serialize`.

        Args:
            data: The NATS message payload.

        Returns:
            The message.

        Raises:
            MalformedMessage: Not JSON, not an object, another version, an
                unknown type, or a field missing or of the wrong type.
        """
        if len(data) > _MAX_CONTROL:
            raise MalformedMessage(f"control message too large: {len(data)} bytes")
        try:
            body = json.loads(bytes(data))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise MalformedMessage(f"control message is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise MalformedMessage("control message is not a JSON object")
        if body.get("v") != LAYOUT_VERSION:
            raise MalformedMessage(f"control message of version {body.get('v')!r}, not 1")
        kind = body.get("type")
        entry = _BY_NAME.get(kind) if isinstance(kind, str) else None
        if entry is None:
            raise MalformedMessage(f"control message of unknown type {body.get('type')!r}")
        event_cls, fields = entry
        guild = _from_json("str", body.get("guild_id"), "guild_id")
        channel = _from_json("str", body.get("channel_id"), "channel_id")
        at = body.get("at")
        if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
            raise MalformedMessage("control message: at must be a number")
        values = {key: _from_json(kind, body.get(key), key) for key, kind in fields.items()}
        return cls(guild, channel, float(at), event_cls(**values))
