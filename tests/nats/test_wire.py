"""The NATS message layouts: exact bytes, round trips, parsers that raise only rxvoice errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time

import pytest
import reactivex
from hypothesis import given
from hypothesis import strategies as st

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
from rxvoice.nats import to_frames
from rxvoice.nats.wire import (
    HEADER_SIZE,
    ControlMessage,
    SessionStart,
    SsrcChange,
    StateChange,
    VoicePacket,
)
from rxvoice.testing.packets import rtp_frame

U64 = 2**64 - 1
snowflakes = st.integers(1, U64).map(str)
frames = st.builds(
    lambda n, ssrc, marker, opus: rtp_frame(n, ssrc, opus, marker=marker),
    st.integers(0, 2**40),
    st.integers(0, 2**32 - 1),
    st.booleans(),
    st.binary(max_size=400),
)
packets = st.builds(
    VoicePacket,
    guild_id=snowflakes,
    channel_id=snowflakes,
    user_id=st.none() | snowflakes,
    received_at=st.integers(0, 2**53).map(lambda us: us / 1e6),
    dave_epoch=st.integers(0, U64),
    dave_protocol_version=st.integers(0, 255),
    frame=frames,
)


def test_the_documented_layout_byte_by_byte():
    frame = rtp_frame(7, 0xAABBCCDD, b"opus!", marker=True)
    packet = VoicePacket("1", "2", "3", 1.5, 9, 1, frame)
    data = packet.serialize()
    assert HEADER_SIZE == 43 and len(data) == 43 + 12 + 5
    assert data[0] == 1  # layout version
    assert data[1] == 0x01  # the user is known
    assert data[2] == 1  # DAVE protocol version
    assert struct.unpack(">QQQQQ", data[3:43]) == (1, 2, 3, 9, 1_500_000)
    assert data[43:] == frame  # AudioFrame.frame verbatim
    assert data[44] == 0x80 | 120  # marker and payload type kept


def test_an_unknown_user_has_no_flag_and_id_zero():
    data = VoicePacket("1", "2", None, 0.0, 0, 0, rtp_frame(0, 5, b"x")).serialize()
    assert data[1] == 0 and data[19:27] == bytes(8)
    assert VoicePacket.parse(data).user_id is None


@given(packets)
def test_round_trip(packet: VoicePacket):
    again = VoicePacket.parse(packet.serialize())
    assert again == packet
    assert (again.ssrc, again.sequence, again.timestamp, again.opus) == (
        int.from_bytes(packet.frame[8:12], "big"),
        int.from_bytes(packet.frame[2:4], "big"),
        int.from_bytes(packet.frame[4:8], "big"),
        packet.frame[12:],
    )


@given(st.binary(max_size=120))
def test_the_frame_parser_raises_only_malformed_packet(data: bytes):
    try:
        packet = VoicePacket.parse(data)
    except MalformedPacket:
        return
    assert packet.serialize() == data  # what parses is exactly what was written


@given(packets, st.integers(0, 60), st.integers(0, 255))
def test_corrupting_a_header_byte_parses_or_raises_malformed_packet(
    packet: VoicePacket, where: int, value: int
):
    data = bytearray(packet.serialize())
    data[where % len(data)] = value
    with contextlib.suppress(MalformedPacket):
        VoicePacket.parse(bytes(data))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01" * 54, "too short"),
        (b"\x02" + bytes(54), "version 2"),
        (b"\x01\x02" + bytes(53), "unknown flags"),
        (
            b"\x01\x00\x00" + bytes(16) + b"\x00" * 7 + b"\x05" + bytes(16) + b"\x80" + bytes(11),
            "no user flag",
        ),
        (b"\x01\x00" + bytes(41) + b"\x90" + bytes(11), "starts with 0x90"),
    ],
)
def test_bad_frames_are_explained(data: bytes, message: str):
    with pytest.raises(MalformedPacket, match=message):
        VoicePacket.parse(data)


@pytest.mark.parametrize(
    "packet",
    [
        VoicePacket("guild", "2", None, 0.0, 0, 0, rtp_frame(0, 1, b"")),
        VoicePacket("1", "2", "-3", 0.0, 0, 0, rtp_frame(0, 1, b"")),
        VoicePacket("1", str(2**64), None, 0.0, 0, 0, rtp_frame(0, 1, b"")),
        VoicePacket("1", "2", None, -1.0, 0, 0, rtp_frame(0, 1, b"")),
        VoicePacket("1", "2", None, float("nan"), 0, 0, rtp_frame(0, 1, b"")),
        VoicePacket("1", "2", None, 0.0, -1, 0, rtp_frame(0, 1, b"")),
        VoicePacket("1", "2", None, 0.0, 0, 256, rtp_frame(0, 1, b"")),
        VoicePacket("1", "2", None, 0.0, 0, 0, b"\x80short"),
        VoicePacket("1", "2", None, 0.0, 0, 0, b"\x90" + bytes(11)),
    ],
)
def test_unpublishable_values_are_usage_errors(packet: VoicePacket):
    with pytest.raises(UsageError):
        packet.serialize()


def test_a_packet_carries_the_frame_it_was_made_of():
    frame = rtp_frame(3, 77, b"opus")
    data = VoicePacket("1", "2", "3", 1_700_000_000.25, 4, 1, frame).serialize()
    audio = VoicePacket.parse(data).to_frame(received_at=12.5)
    assert (audio.user_id, audio.ssrc, audio.sequence, audio.frame) == ("3", 77, 3, frame)
    assert audio.received_at == 12.5


async def test_to_frames_moves_arrival_times_to_the_loop_clock():
    wall, loop = time.time(), asyncio.get_running_loop().time()
    earlier = VoicePacket("1", "2", "3", wall - 2.0, 0, 0, rtp_frame(0, 1, b"x"))
    got: list[AudioFrame] = []
    reactivex.of(earlier).pipe(to_frames()).subscribe(got.append)
    # Two seconds before now, on the loop's clock (give or take this test's own run time).
    assert loop - 2.5 < got[0].received_at < loop - 1.5


# -- control messages ----------------------------------------------------------------------

EVENTS = [
    SpeakingEvent("5", 1234, SpeakingFlags.MICROPHONE | SpeakingFlags.PRIORITY),
    ClientConnect("5"),
    ClientDisconnect("5"),
    SsrcChange("5", 99, None),
    SsrcChange("5", 100, 99),
    SessionStart("6", 42),
    SessionStart(None, None),
    StateChange(ConnectionState.RESUMING),
    DaveEpochTransition(3, 1, 7, ("5", "6"), "12345 67890"),
    DaveEpochTransition(0, 0, 0),
    Disconnected(4015, True, "voice server crashed"),
    Disconnected(None, False, "closed"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_control_round_trip(event):
    message = ControlMessage("1", "2", 1_700_000_000.123456, event)
    data = message.serialize()
    assert b" " not in data.replace(b"voice server crashed", b"").replace(b"12345 67890", b"")
    assert ControlMessage.parse(data) == message


def test_control_json_is_the_documented_shape():
    data = ControlMessage("1", "2", 3.5, SpeakingEvent("5", 9, SpeakingFlags.MICROPHONE))
    assert json.loads(data.serialize()) == {
        "v": 1,
        "type": "speaking",
        "guild_id": "1",
        "channel_id": "2",
        "at": 3.5,
        "user_id": "5",
        "ssrc": 9,
        "flags": 1,
    }
    assert data.type == "speaking"


def test_only_control_events_serialize():
    with pytest.raises(UsageError):
        ControlMessage("1", "2", 0.0, "hello").serialize()  # type: ignore[arg-type]


def _control(**changes: object) -> bytes:
    body: dict[str, object] = {
        "v": 1,
        "type": "join",
        "guild_id": "1",
        "channel_id": "2",
        "at": 1.0,
        "user_id": "5",
    }
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b"[" * 60_000,  # deep, under the size cap
        b" " * 70_000,
        _control(v=2),
        _control(type="dance"),
        _control(type=["join"]),
        _control(user_id=5),
        _control(user_id=...),
        _control(guild_id=None),
        _control(at="now"),
        _control(at=True),
        _control(type="speaking", ssrc=-1, flags=1),
        _control(type="speaking", ssrc=True, flags=1),
        _control(type="state", state="dancing"),
        _control(type="dave", epoch=1, protocol_version=1, transition_id=0, members=[1]),
        _control(type="disconnected", code=None, will_reconnect="yes", reason=""),
        b'{"v":1,"type":"join","guild_id":"1","channel_id":"2","at":NaN,"user_id":"5"}',
    ],
)
def test_bad_control_messages_are_explained(data: bytes):
    with pytest.raises(MalformedMessage):
        ControlMessage.parse(data)


@given(st.binary(max_size=200))
def test_the_control_parser_raises_only_malformed_message_on_bytes(data: bytes):
    with contextlib.suppress(MalformedMessage):
        ControlMessage.parse(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(
    st.sampled_from(
        ["speaking", "join", "leave", "ssrc", "session", "state", "dave", "disconnected"]
    ),
    st.dictionaries(
        st.sampled_from(
            [
                "guild_id",
                "channel_id",
                "at",
                "user_id",
                "ssrc",
                "flags",
                "previous",
                "state",
                "epoch",
                "protocol_version",
                "transition_id",
                "members",
                "privacy_code",
                "code",
                "will_reconnect",
                "reason",
            ]
        ),
        json_values,
    ),
)
def test_the_control_parser_raises_only_malformed_message_on_json(kind: str, fields: dict):
    data = json.dumps({"v": 1, "type": kind, **fields}).encode()
    with contextlib.suppress(MalformedMessage):
        ControlMessage.parse(data)
