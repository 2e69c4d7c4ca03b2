import dataclasses
import pickle
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxvoice.errors import MalformedPacket, UsageError
from rxvoice.events import AudioFrame
from rxvoice.protocol.rtp import (
    ONE_BYTE_EXTENSION_PROFILE,
    OPUS_PAYLOAD_TYPE,
    RTP_HEADER_SIZE,
    RTP_VERSION,
    SILENCE_FRAME,
    DatagramKind,
    ExtensionElement,
    RtpHeader,
    RtpPacket,
    add_padding,
    build_header,
    classify,
    is_rtcp,
    parse_one_byte_extension,
    split_extension,
    strip_padding,
)
from tests.vectors import RTP

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)

headers = st.builds(
    RtpHeader,
    sequence=u16,
    timestamp=u32,
    ssrc=u32,
    payload_type=st.integers(0, 127),
    marker=st.booleans(),
    padding=st.booleans(),
    csrcs=st.lists(u32, max_size=15).map(tuple),
    extension_profile=st.none() | u16,
    extension_length=u16,
).map(
    lambda h: h if h.extension_profile is not None else dataclasses.replace(h, extension_length=0)
)


def test_constants():
    assert SILENCE_FRAME == b"\xf8\xff\xfe"
    assert OPUS_PAYLOAD_TYPE == 120
    assert RTP_VERSION == 2
    assert ONE_BYTE_EXTENSION_PROFILE == 0xBEDE
    assert RTP_HEADER_SIZE == 12


# -- captured packets (discord.js fixtures) ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "sequence", "timestamp"),
    [
        ("RTP_PACKET_DESKTOP", 10217, 4157324497),
        ("RTP_PACKET_CHROME", 18143, 660155095),
        ("RTP_PACKET_ANDROID", 14800, 3763991879),
    ],
)
def test_captured_packets(name, sequence, timestamp):
    vector = RTP[name]
    header = RtpHeader.parse(vector["packet"])
    assert header.sequence == sequence
    assert header.timestamp == timestamp
    assert header.ssrc == vector["ssrc"]
    assert header.payload_type == OPUS_PAYLOAD_TYPE
    assert not header.padding
    assert header.csrcs == ()
    # The same functions TransportCipher.open uses after decrypting.
    extension, opus = split_extension(header, vector["decrypted"])
    assert opus == vector["opusFrame"]
    packet = RtpPacket.from_plaintext(header, vector["decrypted"])
    assert packet.payload == vector["opusFrame"]
    assert packet.extension == extension
    if header.extension_profile is not None:
        assert header.extension_profile == ONE_BYTE_EXTENSION_PROFILE
        assert header.size == 16
        assert len(extension) == 4 * header.extension_length
        # 10 ff: id 1 (audio level) = ff; 90 00: id 9 (Discord's speaker extension) = 00.
        assert parse_one_byte_extension(extension) == (
            ExtensionElement(1, b"\xff"),
            ExtensionElement(9, b"\x00"),
        )
    else:
        assert header.size == 12
        assert extension == b""
    assert classify(vector["packet"]) is DatagramKind.RTP


# -- header ------------------------------------------------------------------------------


@given(headers)
def test_header_round_trip(header):
    wire = header.serialize()
    assert len(wire) == header.size
    parsed = RtpHeader.parse(wire)
    assert parsed == header
    assert type(parsed) is RtpHeader
    assert hash(parsed) == hash(header)


@given(headers, st.binary(max_size=40))
def test_header_parse_ignores_trailing_bytes(header, tail):
    assert RtpHeader.parse(header.serialize() + tail) == header


def test_header_layout():
    header = RtpHeader(sequence=0x0102, timestamp=0x03040506, ssrc=0x0708090A)
    assert header.serialize() == bytes.fromhex("80780102030405060708090a")
    full = RtpHeader(
        sequence=1,
        timestamp=2,
        ssrc=3,
        payload_type=0x78,
        marker=True,
        padding=True,
        csrcs=(0xAABBCCDD,),
        extension_profile=0xBEDE,
        extension_length=2,
    )
    assert full.serialize() == bytes.fromhex("b1f800010000000200000003aabbccddbede0002")
    assert full.size == 20
    assert full.extension_size == 8


def test_parsed_header_is_frozen():
    header = RtpHeader.parse(RTP["RTP_PACKET_DESKTOP"]["packet"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        header.sequence = 1  # type: ignore[misc]
    assert dataclasses.replace(header, sequence=1).sequence == 1
    assert "RtpHeader(sequence=10217" in repr(header)


def test_parsed_packet_pickles_and_compares():
    header = RtpHeader.parse(RTP["RTP_PACKET_ANDROID"]["packet"])
    assert pickle.loads(pickle.dumps(header)) == header
    packet = RtpPacket.from_plaintext(header, RTP["RTP_PACKET_ANDROID"]["decrypted"])
    assert packet == RtpPacket(header, b"\xf8\xff\xfe", b"\x10\xff\x90\x00")
    assert pickle.loads(pickle.dumps(packet)) == packet
    assert not hasattr(header, "__dict__")


def test_frame_rejects_hand_built_out_of_range_header():
    with pytest.raises(UsageError):
        RtpPacket(RtpHeader(sequence=1 << 16, timestamp=0, ssrc=0), b"").frame()


def test_parse_subclass_uses_its_own_class():
    class MyHeader(RtpHeader):
        __slots__ = ()

    parsed = MyHeader.parse(build_header(1, 2, 3))
    assert type(parsed) is MyHeader


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x78",
        bytes(11),
        bytes.fromhex("00780001000000020000000300"),  # version 0
        bytes.fromhex("c0780001000000020000000300"),  # version 3
        bytes.fromhex("81780001000000020000000300"),  # CC=1 but only one byte follows
        bytes.fromhex("8f78000100000002000000030000000000"),  # CC=15
        bytes.fromhex("907800010000000200000003bede00"),  # X=1, 3-byte preamble
        bytes.fromhex("91780001000000020000000311111111bede"),  # CSRC then short preamble
    ],
)
def test_header_parse_rejects(data):
    with pytest.raises(MalformedPacket):
        RtpHeader.parse(data)


def test_header_without_extension_body_is_fine():
    # rtpsize: the extension body is in the ciphertext, so parse needs only the preamble.
    header = RtpHeader.parse(bytes.fromhex("907800010000000200000003bede00ff"))
    assert header.extension_length == 0xFF
    assert header.size == 16


@pytest.mark.parametrize(
    "header",
    [
        RtpHeader(sequence=0x10000, timestamp=0, ssrc=0),
        RtpHeader(sequence=0, timestamp=1 << 32, ssrc=0),
        RtpHeader(sequence=0, timestamp=0, ssrc=-1),
        RtpHeader(sequence=0, timestamp=0, ssrc=0, payload_type=128),
        RtpHeader(sequence=0, timestamp=0, ssrc=0, csrcs=(0,) * 16),
        RtpHeader(sequence=0, timestamp=0, ssrc=0, csrcs=(1 << 32,)),
        RtpHeader(sequence=0, timestamp=0, ssrc=0, extension_profile=0x10000),
        RtpHeader(sequence=0, timestamp=0, ssrc=0, extension_profile=0xBEDE, extension_length=-1),
    ],
)
def test_header_serialize_rejects_out_of_range(header):
    with pytest.raises(UsageError):
        header.serialize()


@given(u16, u32, u32, st.booleans(), st.integers(0, 127))
def test_build_header(sequence, timestamp, ssrc, marker, payload_type):
    wire = build_header(sequence, timestamp, ssrc, marker=marker, payload_type=payload_type)
    assert wire == RtpHeader(sequence, timestamp, ssrc, payload_type, marker).serialize()


def test_build_header_rejects():
    with pytest.raises(UsageError):
        build_header(65536, 0, 0)
    with pytest.raises(UsageError):
        build_header(0, 0, 0, payload_type=200)


# -- packet -----------------------------------------------------------------------------


@given(headers, st.binary(max_size=64))
def test_packet_frame(header, payload):
    packet = RtpPacket(header, payload, b"\x10\xff\x00\x00")
    frame = packet.frame()
    assert len(frame) == RTP_HEADER_SIZE + len(payload)
    plain = RtpHeader.parse(frame)
    assert plain == RtpHeader(
        header.sequence, header.timestamp, header.ssrc, header.payload_type, header.marker
    )
    audio = AudioFrame.from_packet(frame)
    assert audio.ssrc == header.ssrc
    assert audio.sequence == header.sequence
    assert audio.timestamp == header.timestamp
    assert audio.marker == header.marker
    assert audio.opus == payload
    if header.payload_type == OPUS_PAYLOAD_TYPE:
        assert audio.frame == frame  # derived back, byte for byte


@given(
    st.binary(max_size=64),
    st.lists(st.binary(min_size=4, max_size=4), max_size=4).map(b"".join),
    st.none() | st.integers(1, 255),
)
def test_from_plaintext_strips_padding_then_extension(payload, extension, padding):
    header = RtpHeader(
        sequence=1,
        timestamp=2,
        ssrc=3,
        padding=padding is not None,
        extension_profile=0xBEDE if extension else None,
        extension_length=len(extension) // 4,
    )
    plaintext = extension + payload
    if padding is not None:
        plaintext = add_padding(plaintext, padding)
    packet = RtpPacket.from_plaintext(header, plaintext)
    assert packet == RtpPacket(header, payload, extension)
    assert type(packet) is RtpPacket
    with pytest.raises(dataclasses.FrozenInstanceError):
        packet.payload = b""  # type: ignore[misc]


def test_from_plaintext_extension_longer_than_plaintext():
    header = RtpHeader(1, 2, 3, extension_profile=0xBEDE, extension_length=2)
    with pytest.raises(MalformedPacket):
        RtpPacket.from_plaintext(header, bytes(7))
    assert RtpPacket.from_plaintext(header, bytes(8)).payload == b""


def test_from_plaintext_padding_eating_extension():
    header = RtpHeader(1, 2, 3, padding=True, extension_profile=0xBEDE, extension_length=1)
    with pytest.raises(MalformedPacket):
        RtpPacket.from_plaintext(header, b"\x10\xff\x00\x02")


# -- padding ----------------------------------------------------------------------------


@given(st.binary(max_size=64), st.integers(1, 255))
def test_padding_round_trip(payload, count):
    padded = add_padding(payload, count)
    assert len(padded) == len(payload) + count
    assert strip_padding(padded) == payload


@pytest.mark.parametrize("data", [b"", b"\x00", b"abc\x00", b"\x02", b"ab\x04"])
def test_strip_padding_rejects(data):
    with pytest.raises(MalformedPacket):
        strip_padding(data)


def test_strip_padding_whole_payload():
    assert strip_padding(b"\x00\x00\x03") == b""


@pytest.mark.parametrize("count", [0, 256, -1])
def test_add_padding_rejects(count):
    with pytest.raises(UsageError):
        add_padding(b"x", count)


# -- one-byte extension elements --------------------------------------------------------

elements = st.lists(
    st.builds(ExtensionElement, id=st.integers(1, 14), data=st.binary(min_size=1, max_size=16)),
    max_size=6,
)


def _encode_elements(items, padding):
    out = bytearray()
    for element, pad in zip(items, padding, strict=False):
        out += bytes(pad)
        out.append(element.id << 4 | (len(element.data) - 1))
        out += element.data
    out += bytes((-len(out)) % 4)
    return bytes(out)


@given(elements, st.lists(st.integers(0, 3), min_size=6, max_size=6))
def test_one_byte_extension_round_trip(items, padding):
    assert parse_one_byte_extension(_encode_elements(items, padding)) == tuple(items)


def test_one_byte_extension_examples():
    assert parse_one_byte_extension(b"") == ()
    assert parse_one_byte_extension(b"\x00\x00\x00\x00") == ()
    assert parse_one_byte_extension(b"\x10\xff\x00\x00") == (ExtensionElement(1, b"\xff"),)
    assert parse_one_byte_extension(b"\x91\x01\x02\x00") == (ExtensionElement(9, b"\x01\x02"),)
    # id 15 stops parsing: what follows is ignored, even if it would be malformed
    assert parse_one_byte_extension(b"\x10\xaa\xf0\x5f") == (ExtensionElement(1, b"\xaa"),)


@pytest.mark.parametrize("body", [b"\x10", b"\x13\x01\x02\x03", b"\x05\x00\x00\x00", b"\xe1\x00"])
def test_one_byte_extension_rejects(body):
    with pytest.raises(MalformedPacket):
        parse_one_byte_extension(body)


# -- classify ---------------------------------------------------------------------------


def _rtcp(packet_type: int, size: int = 32) -> bytes:
    return bytes((0x80, packet_type)) + struct.pack(">H", size // 4 - 1) + bytes(size - 4)


def test_classify():
    discovery_reply = b"\x00\x02\x00\x46" + bytes(70)
    assert classify(discovery_reply) is DatagramKind.IP_DISCOVERY
    assert classify(b"\x00\x01\x00\x46" + bytes(70)) is DatagramKind.UNKNOWN  # a request
    assert classify(bytes(8)) is DatagramKind.KEEPALIVE
    assert classify(_rtcp(201)) is DatagramKind.RTCP
    assert classify(RTP["AES256GCM_SAMPLE"]["encrypted"]) is DatagramKind.RTP
    assert classify(b"") is DatagramKind.UNKNOWN
    assert classify(b"\x80") is DatagramKind.UNKNOWN
    assert classify(build_header(1, 2, 3)) is DatagramKind.UNKNOWN  # header only, 12 bytes
    assert classify(b"\x40\x78" + bytes(30)) is DatagramKind.UNKNOWN  # version 1


def test_eight_byte_rtcp_is_not_a_keepalive():
    empty_rr = struct.pack(">BBHI", 0x80, 201, 1, 0x1234)
    bye = struct.pack(">BBHI", 0x81, 203, 1, 0x1234)
    assert classify(empty_rr) is DatagramKind.RTCP
    assert classify(bye) is DatagramKind.RTCP
    # Keepalives whose counter happens to start like an RTCP header.
    assert classify(struct.pack("<II", 0xC880, 0)) is DatagramKind.KEEPALIVE
    assert classify(struct.pack("<II", 0x0100C880, 0)) is DatagramKind.KEEPALIVE


@pytest.mark.parametrize("packet_type", range(200, 207))
def test_classify_rtcp_before_rtp(packet_type):
    datagram = _rtcp(packet_type)
    assert is_rtcp(datagram)
    assert classify(datagram) is DatagramKind.RTCP


def test_marker_bit_rtp_is_rtp():
    # M=1 with PT 120 gives byte 1 = 0xF8 = 248: outside the RTCP range.
    datagram = build_header(1, 2, 3, marker=True) + b"payload"
    assert not is_rtcp(datagram)
    assert classify(datagram) is DatagramKind.RTP


@pytest.mark.parametrize("byte1", [199, 207, 0x78])
def test_not_rtcp(byte1):
    assert not is_rtcp(bytes((0x80, byte1)) + bytes(30))


@given(st.binary(max_size=100))
def test_classify_total(data):
    kind = classify(data)
    assert isinstance(kind, DatagramKind)
    assert isinstance(is_rtcp(data), bool)
    if kind is DatagramKind.RTP:
        assert len(data) > 12
        assert data[0] >> 6 == 2
