"""Random bytes into every media-side parser: only documented ProtocolErrors escape."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxvoice.errors import DaveError, DecryptionError, MalformedPacket
from rxvoice.events import AudioFrame
from rxvoice.protocol.crypto import EncryptionMode, OpenFailure, TransportCipher
from rxvoice.protocol.daveframe import (
    MAGIC_MARKER,
    DaveFrame,
    is_dave_frame,
    is_silence,
    uleb128_decode,
)
from rxvoice.protocol.ipdiscovery import IpDiscoveryRequest, IpDiscoveryResponse, Keepalive
from rxvoice.protocol.rtp import (
    RTP_HEADER_SIZE,
    DatagramKind,
    RtpHeader,
    RtpPacket,
    classify,
    is_rtcp,
    parse_one_byte_extension,
    split_extension,
    strip_padding,
)

KEY = bytes(range(32))
CIPHERS = [TransportCipher(mode, KEY) for mode in EncryptionMode]

datagrams = st.binary(max_size=200)
# Headers that parse, so the fuzz reaches the AEAD and the strip steps as well.
rtp_like = st.tuples(
    st.integers(0, 0x3F).map(lambda b: 0x80 | b),  # V=2, random P/X/CC
    st.binary(min_size=11, max_size=200),
).map(lambda t: bytes((t[0],)) + t[1])
# Authentic packets with random headers (padding and extension flags included),
# so the fuzz reaches the steps after authentication too.
sealed_like = st.tuples(
    st.integers(0, 0x3F),
    st.binary(min_size=11, max_size=11),
    st.binary(max_size=60),
    st.integers(0, 0xFFFFFFFF),
).map(
    lambda t: CIPHERS[0].seal(
        bytes((0x80 | (t[0] & 0x30),)) + t[1] + (bytes(4) if t[0] & 0x10 else b""),
        t[2],
        t[3],
    )
)
# 74-byte discovery-looking datagrams with the right framing and random contents.
discovery_like = st.tuples(st.sampled_from([1, 2]), st.binary(min_size=68, max_size=68)).map(
    lambda t: t[0].to_bytes(2, "big") + b"\x00\x46" + t[1]
)
# Frames ending in the marker with a plausible size byte, to get past the first checks.
dave_like = st.tuples(st.binary(max_size=60), st.integers(0, 0xFF)).map(
    lambda t: t[0] + bytes((t[1],)) + MAGIC_MARKER
)


@given(datagrams | rtp_like)
def test_rtp_header_parse(data):
    try:
        header = RtpHeader.parse(data)
    except MalformedPacket:
        return
    assert header.size <= len(data)
    assert data[: header.size] == header.serialize()


@given(datagrams)
def test_one_byte_extension(data):
    try:
        elements = parse_one_byte_extension(data)
    except MalformedPacket:
        return
    assert all(1 <= e.id <= 14 and 1 <= len(e.data) <= 16 for e in elements)


@given(datagrams)
def test_strip_padding(data):
    try:
        stripped = strip_padding(data)
    except MalformedPacket:
        return
    assert data.startswith(stripped)


@given(datagrams | rtp_like | discovery_like)
def test_classify_and_is_rtcp_never_raise(data):
    assert isinstance(classify(data), DatagramKind)
    assert isinstance(is_rtcp(data), bool)


@given(datagrams | discovery_like)
def test_ip_discovery(data):
    for parser in (IpDiscoveryRequest.parse, IpDiscoveryResponse.parse):
        try:
            parsed = parser(data)
        except MalformedPacket:
            continue
        assert parser(parsed.serialize()) == parsed


@given(datagrams | st.binary(min_size=8, max_size=8))
def test_keepalive(data):
    try:
        keepalive = Keepalive.parse(data)
    except MalformedPacket:
        return
    assert keepalive.serialize() == data


@pytest.mark.parametrize("cipher", CIPHERS, ids=lambda c: c.mode.value)
@given(data=datagrams | rtp_like)
def test_transport_open(cipher, data):
    with pytest.raises((MalformedPacket, DecryptionError)):
        cipher.open(data)


@given(datagrams | dave_like)
def test_dave_frame(data):
    try:
        frame = DaveFrame.parse(data)
    except DaveError:
        assert not is_dave_frame(data)
        return
    assert is_dave_frame(data)
    assert len(frame.tag) == 8
    assert 0 <= frame.nonce <= 0xFFFFFFFF
    assert len(frame.ciphertext) + data[-3] == len(data)


@given(datagrams, st.integers(0, 210))
def test_uleb128_decode(data, offset):
    try:
        value, end = uleb128_decode(data, offset)
    except DaveError:
        return
    assert offset < end <= min(len(data), offset + 10)
    assert 0 <= value < 1 << 64


@given(datagrams)
def test_is_predicates_never_raise(data):
    assert isinstance(is_dave_frame(data), bool)
    assert is_silence(data) == (data == b"\xf8\xff\xfe")


@pytest.mark.parametrize("cipher", CIPHERS, ids=lambda c: c.mode.value)
@given(data=datagrams | rtp_like | sealed_like)
def test_try_open_never_raises_and_agrees_with_open(cipher, data):
    result = cipher.try_open(data)
    try:
        packet = cipher.open(data)
    except MalformedPacket:
        assert result is OpenFailure.MALFORMED
    except DecryptionError:
        assert result is OpenFailure.UNDECRYPTABLE
    else:
        assert result == packet


@given(
    header=st.builds(
        RtpHeader,
        sequence=st.integers(0, 0xFFFF),
        timestamp=st.integers(0, 0xFFFFFFFF),
        ssrc=st.integers(0, 0xFFFFFFFF),
        padding=st.booleans(),
        extension_profile=st.none() | st.just(0xBEDE),
        extension_length=st.integers(0, 0xFFFF),
    ),
    plaintext=st.binary(max_size=120),
)
def test_from_plaintext_and_split_extension(header, plaintext):
    try:
        packet = RtpPacket.from_plaintext(header, plaintext)
    except MalformedPacket:
        return
    assert len(packet.extension) == header.extension_size
    assert plaintext.startswith(packet.extension + packet.payload)
    try:
        extension, payload = split_extension(header, plaintext)
    except MalformedPacket:
        return
    assert extension + payload == plaintext


@given(datagrams | rtp_like)
def test_audio_frame_from_packet(data):
    try:
        frame = AudioFrame.from_packet(data, user_id="1001")
    except MalformedPacket:
        return
    header = RtpHeader.parse(data)
    assert (frame.ssrc, frame.sequence, frame.timestamp) == (
        header.ssrc,
        header.sequence,
        header.timestamp,
    )
    assert frame.frame[RTP_HEADER_SIZE:] == data[header.size :]
