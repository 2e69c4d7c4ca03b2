import dataclasses
import secrets

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt

from rxvoice.errors import DecryptionError, MalformedPacket, ProtocolError, UsageError
from rxvoice.protocol.crypto import (
    EncryptionMode,
    RtpCrypto,
    TransportCipher,
    choose_mode,
)
from rxvoice.protocol.rtp import RtpHeader, RtpPacket, add_padding, build_header
from tests.vectors import RTP

AES = EncryptionMode.AEAD_AES256_GCM_RTPSIZE
XCHACHA = EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE
MODES = [AES, XCHACHA]
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

VECTORS = [("AES256GCM_SAMPLE", AES), ("XCHACHA20_SAMPLE", XCHACHA)]


# -- captured vectors -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "mode"), VECTORS)
def test_vector_open(name, mode):
    vector = RTP[name]
    packet = TransportCipher(mode, vector["key"]).open(vector["encrypted"])
    header = packet.header
    # The raw AEAD plaintext is the extension body followed by the payload (no padding here).
    assert not header.padding
    assert packet.extension + packet.payload == vector["decrypted"]
    if name == "XCHACHA20_SAMPLE":
        assert header.extension_profile == 0xBEDE
        assert header.extension_length == 2
        assert packet.extension == vector["decrypted"][:8]
        assert packet.payload == vector["decrypted"][8:]
    else:
        assert header.extension_profile is None
        assert packet.payload == b"\xf8\xff\xfe"


@pytest.mark.parametrize(("name", "mode"), VECTORS)
@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_any_bytes_like_datagram_opens_the_same(name, mode, kind):
    vector = RTP[name]
    cipher = TransportCipher(mode, vector["key"])
    assert cipher.open(kind(vector["encrypted"])) == cipher.open(vector["encrypted"])


@pytest.mark.parametrize(("name", "mode"), VECTORS)
def test_vector_raw_aead(name, mode):
    # Independent check of the layout this module assumes (AAD, nonce placement).
    vector = RTP[name]
    data = vector["encrypted"]
    hlen = RtpHeader.parse(data).size
    if mode is AES:
        raw = AESGCM(vector["key"]).decrypt(data[-4:] + bytes(8), data[hlen:-4], data[:hlen])
    else:
        raw = crypto_aead_xchacha20poly1305_ietf_decrypt(
            data[hlen:-4], data[:hlen], data[-4:] + bytes(20), vector["key"]
        )
    assert raw == vector["decrypted"]


@pytest.mark.parametrize(("name", "mode"), VECTORS)
def test_vector_seal_reproduces_packet(name, mode):
    vector = RTP[name]
    data = vector["encrypted"]
    hlen = RtpHeader.parse(data).size
    nonce = int.from_bytes(data[-4:], "big")
    sealed = TransportCipher(mode, vector["key"]).seal(data[:hlen], vector["decrypted"], nonce)
    assert sealed == data


@pytest.mark.parametrize(("name", "mode"), VECTORS)
def test_vector_wrong_mode_fails(name, mode):
    vector = RTP[name]
    other = XCHACHA if mode is AES else AES
    with pytest.raises(DecryptionError):
        TransportCipher(other, vector["key"]).open(vector["encrypted"])


# -- mode choice ------------------------------------------------------------------------


def test_choose_mode():
    assert choose_mode([XCHACHA.value, AES.value]) is AES
    assert choose_mode([AES.value, XCHACHA.value]) is AES
    assert choose_mode(["xsalsa20_poly1305", XCHACHA.value]) is XCHACHA
    assert choose_mode(iter([XCHACHA.value])) is XCHACHA
    assert choose_mode([["unhashable"], {}, 3, AES.value]) is AES  # type: ignore[list-item]
    with pytest.raises(ProtocolError):
        choose_mode(["xsalsa20_poly1305", "aead_aes256_gcm"])
    with pytest.raises(ProtocolError):
        choose_mode([])


def test_mode_is_str():
    assert AES == "aead_aes256_gcm_rtpsize"
    assert XCHACHA == "aead_xchacha20_poly1305_rtpsize"
    assert TransportCipher("aead_aes256_gcm_rtpsize", KEY).mode is AES  # type: ignore[arg-type]


# -- construction and secrecy -----------------------------------------------------------


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33), "k" * 32, None])
@pytest.mark.parametrize("mode", MODES)
def test_bad_key(mode, key):
    with pytest.raises(UsageError):
        TransportCipher(mode, key)


def test_bad_mode():
    with pytest.raises(UsageError):
        TransportCipher("xsalsa20_poly1305", KEY)  # type: ignore[arg-type]


def test_bytearray_key():
    cipher = TransportCipher(AES, bytearray(KEY))  # type: ignore[arg-type]
    assert cipher.open(TransportCipher(AES, KEY).seal(build_header(1, 2, 3), b"x", 1)).payload == (
        b"x"
    )


def _leaks(text: str, key: bytes) -> bool:
    return key.hex() in text.lower() or repr(key) in text or str(list(key)) in text


@pytest.mark.parametrize("mode", MODES)
def test_repr_hides_key(mode):
    key = bytes(range(100, 132))
    cipher = TransportCipher(mode, key)
    rtp = RtpCrypto(mode, key, 1234, sequence=1, timestamp=2)
    for text in (repr(cipher), str(cipher), repr(rtp), str(rtp)):
        assert not _leaks(text, key)
    assert mode.value in repr(cipher)
    assert "ssrc=1234" in repr(rtp)


def test_error_messages_hide_key():
    key = bytes(range(100, 132))
    cipher = TransportCipher(AES, key)
    with pytest.raises(DecryptionError) as info:
        cipher.open(build_header(1, 2, 3) + bytes(30))
    assert not _leaks(str(info.value), key)
    with pytest.raises(UsageError) as usage:
        TransportCipher(AES, key + b"!")
    assert not _leaks(str(usage.value), key)


# -- round trips ------------------------------------------------------------------------

headers = st.builds(
    RtpHeader,
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=4).map(tuple),
    extension_profile=st.none() | st.just(0xBEDE),
    extension_length=st.integers(0, 4),
)


@pytest.mark.parametrize("mode", MODES)
@given(
    header=headers,
    payload=st.binary(max_size=200),
    padding=st.none() | st.integers(1, 255),
    nonce=st.integers(0, 0xFFFFFFFF),
    data=st.data(),
)
def test_seal_open_round_trip(mode, header, payload, padding, nonce, data):
    if header.extension_profile is None:
        header = dataclasses.replace(header, extension_length=0)
    header = dataclasses.replace(header, padding=padding is not None)
    extension = data.draw(st.binary(min_size=header.extension_size, max_size=header.extension_size))
    plaintext = extension + payload
    if padding is not None:
        plaintext = add_padding(plaintext, padding)
    cipher = TransportCipher(mode, KEY)
    wire = cipher.seal(header.serialize(), plaintext, nonce)
    assert len(wire) == header.size + len(plaintext) + 16 + 4
    assert wire[-4:] == nonce.to_bytes(4, "big")
    assert wire[: header.size] == header.serialize()
    packet = cipher.open(wire)
    assert packet == RtpPacket(header, payload, extension)
    assert type(packet) is RtpPacket
    assert type(packet.header) is RtpHeader


@pytest.mark.parametrize("mode", MODES)
def test_modes_are_different(mode):
    header = build_header(1, 2, 3)
    aes = TransportCipher(AES, KEY).seal(header, b"abc", 7)
    xchacha = TransportCipher(XCHACHA, KEY).seal(header, b"abc", 7)
    assert aes != xchacha
    assert len(aes) == len(xchacha) == 12 + 3 + 16 + 4


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("nonce", [-1, 1 << 32])
def test_seal_rejects_bad_nonce(mode, nonce):
    with pytest.raises(UsageError):
        TransportCipher(mode, KEY).seal(build_header(1, 2, 3), b"x", nonce)


# -- tampering --------------------------------------------------------------------------


def _sample(mode: EncryptionMode) -> bytes:
    header = RtpHeader(
        sequence=0x1234,
        timestamp=0x56789ABC,
        ssrc=0xDEADBEEF,
        csrcs=(0x01020304,),
        extension_profile=0xBEDE,
        extension_length=1,
    )
    return TransportCipher(mode, KEY).seal(header.serialize(), b"\x10\xff\x00\x00opus!", 42)


@pytest.mark.parametrize("mode", MODES)
def test_tampering_any_byte_fails(mode):
    wire = _sample(mode)
    cipher = TransportCipher(mode, KEY)
    assert cipher.open(wire).payload == b"opus!"
    for i in range(len(wire)):
        for bit in (0x01, 0x04, 0x10, 0x80):
            tampered = bytearray(wire)
            tampered[i] ^= bit
            if i == 0:
                # byte 0 holds V/P/X/CC: flipping it may break the structure instead
                with pytest.raises((DecryptionError, MalformedPacket)):
                    cipher.open(bytes(tampered))
            else:
                # AAD (header, CSRC, extension preamble), ciphertext, tag, nonce suffix:
                # authentication runs before padding and extension are looked at
                with pytest.raises(DecryptionError):
                    cipher.open(bytes(tampered))


@pytest.mark.parametrize("mode", MODES)
def test_wrong_key_fails(mode):
    wire = _sample(mode)
    with pytest.raises(DecryptionError):
        TransportCipher(mode, OTHER_KEY).open(wire)


@pytest.mark.parametrize("mode", MODES)
def test_truncated(mode):
    wire = _sample(mode)
    cipher = TransportCipher(mode, KEY)
    hlen = 20
    for cut in range(1, len(wire)):
        with pytest.raises((DecryptionError, MalformedPacket)):
            cipher.open(wire[:cut])
    # shorter than header + tag + nonce is structural, not an auth failure
    with pytest.raises(MalformedPacket):
        cipher.open(wire[: hlen + 19])


@pytest.mark.parametrize("mode", MODES)
def test_bad_padding_after_decrypt(mode):
    cipher = TransportCipher(mode, KEY)
    header = RtpHeader(1, 2, 3, padding=True).serialize()
    with pytest.raises(MalformedPacket):
        cipher.open(cipher.seal(header, b"abc\x00", 1))
    with pytest.raises(MalformedPacket):
        cipher.open(cipher.seal(header, b"", 1))


@pytest.mark.parametrize("mode", MODES)
def test_extension_longer_than_plaintext(mode):
    cipher = TransportCipher(mode, KEY)
    header = RtpHeader(1, 2, 3, extension_profile=0xBEDE, extension_length=3).serialize()
    with pytest.raises(MalformedPacket):
        cipher.open(cipher.seal(header, bytes(11), 1))


# -- RtpCrypto counters -----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_rtp_crypto_first_packet(mode):
    rtp = RtpCrypto(mode, KEY, 0xCAFEBABE, sequence=100, timestamp=5000)
    assert (rtp.mode, rtp.ssrc, rtp.sequence, rtp.timestamp, rtp.nonce) == (
        mode,
        0xCAFEBABE,
        100,
        5000,
        0,
    )
    wire = rtp.seal_opus(b"opus")
    assert wire[:12] == bytes.fromhex("8078006400001388cafebabe")
    assert wire[-4:] == b"\x00\x00\x00\x01"  # first nonce is 1
    assert (rtp.sequence, rtp.timestamp, rtp.nonce) == (101, 5960, 1)
    packet = rtp.open(wire)
    assert packet.payload == b"opus"
    assert packet.header == RtpHeader(100, 5000, 0xCAFEBABE)
    # a receiver with the same key (e.g. the SFU) reads it too
    assert RtpCrypto(mode, KEY, 1).open(wire).frame() == build_header(100, 5000, 0xCAFEBABE) + (
        b"opus"
    )


def test_rtp_crypto_counters_wrap():
    rtp = RtpCrypto(AES, KEY, 1, sequence=0xFFFF, timestamp=0xFFFFFFFF - 959, nonce=0xFFFFFFFF)
    first = rtp.seal_opus(b"a")
    assert first[-4:] == b"\x00\x00\x00\x00"  # 0xFFFFFFFF + 1 wraps to 0
    assert RtpHeader.parse(first).sequence == 0xFFFF
    assert (rtp.sequence, rtp.timestamp, rtp.nonce) == (0, 0, 0)
    second = rtp.seal_opus(b"b")
    assert second[-4:] == b"\x00\x00\x00\x01"
    header = RtpHeader.parse(second)
    assert (header.sequence, header.timestamp) == (0, 0)
    assert (rtp.sequence, rtp.timestamp, rtp.nonce) == (1, 960, 1)


def test_rtp_crypto_samples_and_advance():
    rtp = RtpCrypto(XCHACHA, KEY, 1, sequence=0, timestamp=0)
    rtp.seal_opus(b"a", samples=480)
    assert rtp.timestamp == 480
    rtp.advance_timestamp(960 * 5)
    assert rtp.timestamp == 480 + 4800
    rtp.advance_timestamp(1 << 32)
    assert rtp.timestamp == 480 + 4800
    with pytest.raises(UsageError):
        rtp.seal_opus(b"a", samples=-1)
    with pytest.raises(UsageError):
        rtp.advance_timestamp(-1)


def test_rtp_crypto_nonces_strictly_increase():
    rtp = RtpCrypto(AES, KEY, 1, sequence=0, timestamp=0)
    nonces = [int.from_bytes(rtp.seal_opus(b"x")[-4:], "big") for _ in range(50)]
    assert nonces == list(range(1, 51))


def test_rtp_crypto_random_start(monkeypatch):
    calls = []

    def fake_randbelow(n):
        calls.append(n)
        return n - 1

    monkeypatch.setattr(secrets, "randbelow", fake_randbelow)
    rtp = RtpCrypto(AES, KEY, 1)
    assert sorted(calls) == [1 << 16, 1 << 32]
    assert (rtp.sequence, rtp.timestamp) == (0xFFFF, 0xFFFFFFFF)


def test_rtp_crypto_default_start_in_range():
    rtp = RtpCrypto(AES, KEY, 1)
    assert 0 <= rtp.sequence <= 0xFFFF
    assert 0 <= rtp.timestamp <= 0xFFFFFFFF
    assert rtp.nonce == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ssrc": -1},
        {"ssrc": 1 << 32},
        {"sequence": 1 << 16},
        {"timestamp": -1},
        {"nonce": 1 << 32},
    ],
)
def test_rtp_crypto_rejects(kwargs):
    args = {"ssrc": 1, **kwargs}
    ssrc = args.pop("ssrc")
    with pytest.raises(UsageError):
        RtpCrypto(AES, KEY, ssrc, **args)


def test_rtp_crypto_properties_are_read_only():
    rtp = RtpCrypto(AES, KEY, 1, sequence=0, timestamp=0)
    with pytest.raises(AttributeError):
        rtp.nonce = 5  # type: ignore[misc]
    assert rtp.cipher.mode is AES


# -- open_payload: try_open without the objects -----------------------------------------


def _seal_random(bits: int, fixed: bytes, plaintext: bytes, nonce: int) -> bytes:
    """An authentic packet with P/X/CC from ``bits`` (CSRCs and preamble zeroed)."""
    header = bytes((0x80 | bits,)) + fixed + bytes(4 * (bits & 0x0F) + (4 if bits & 0x10 else 0))
    return TransportCipher(AES, KEY).seal(header, plaintext, nonce)


_sealed = st.builds(
    _seal_random,
    st.integers(0, 0x3F),
    st.binary(min_size=11, max_size=11),
    st.binary(max_size=60),
    st.integers(0, 0xFFFFFFFF),
)


@given(data=_sealed | st.binary(max_size=120), flip=st.integers(0, 200))
def test_open_payload_agrees_with_try_open(data, flip):
    cipher = TransportCipher(AES, KEY)
    tampered = bytearray(data)
    if flip < len(data):
        tampered[flip] ^= 1
    for datagram in (data, bytes(tampered)):
        packet = cipher.try_open(datagram)
        payload = cipher.open_payload(datagram)
        if isinstance(packet, RtpPacket):
            assert payload == packet.payload
        else:
            assert payload is packet


@pytest.mark.parametrize("mode", MODES)
def test_open_payload_strips_padding_and_extension(mode):
    cipher = TransportCipher(mode, KEY)
    header = RtpHeader(1, 2, 3, padding=True, extension_profile=0xBEDE, extension_length=1)
    wire = cipher.seal(header.serialize(), add_padding(b"\x10\xff\x00\x00opus!", 3), 9)
    assert cipher.open_payload(bytearray(wire)) == b"opus!"
