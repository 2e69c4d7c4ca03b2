import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from rxvoice.errors import DaveError, UsageError
from rxvoice.protocol.daveframe import (
    MAGIC_MARKER,
    DaveFrame,
    is_dave_frame,
    is_silence,
    uleb128_decode,
    uleb128_encode,
)
from rxvoice.protocol.rtp import SILENCE_FRAME

u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)


# -- ULEB128 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (0xFFFFFFFF, "ffffffff0f"),
        ((1 << 64) - 1, "ffffffffffffffffff01"),
    ],
)
def test_uleb128_examples(value, encoded):
    assert uleb128_encode(value) == bytes.fromhex(encoded)
    assert uleb128_decode(bytes.fromhex(encoded)) == (value, len(encoded) // 2)


@given(u64, st.binary(max_size=4), st.binary(max_size=4))
def test_uleb128_round_trip(value, before, after):
    encoded = uleb128_encode(value)
    assert 1 <= len(encoded) <= 10
    assert uleb128_decode(before + encoded + after, len(before)) == (
        value,
        len(before) + len(encoded),
    )


def test_uleb128_non_minimal_accepted():
    # libdave accepts these too; only the length is bounded
    assert uleb128_decode(b"\x80\x00") == (0, 2)
    assert uleb128_decode(b"\x81\x80\x80\x00") == (1, 4)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80",
        b"\xff\xff",
        b"\x80" * 9,  # truncated
        b"\x80" * 10 + b"\x00",  # 11 bytes: overlong
        b"\x80" * 1000,  # bounded: refused after 10 bytes, no hang
        bytes.fromhex("ffffffffffffffffff02"),  # 2**64: does not fit
        bytes.fromhex("ffffffffffffffffff7f"),
    ],
)
def test_uleb128_decode_rejects(data):
    with pytest.raises(DaveError):
        uleb128_decode(data)


def test_uleb128_offset():
    with pytest.raises(DaveError):
        uleb128_decode(b"\x01", 1)
    with pytest.raises(DaveError):
        uleb128_decode(b"\x01", 5)
    with pytest.raises(UsageError):
        uleb128_decode(b"\x01", -1)


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_uleb128_encode_rejects(value):
    with pytest.raises(UsageError):
        uleb128_encode(value)


# -- frames -----------------------------------------------------------------------------


@st.composite
def frames(draw):
    body = draw(st.binary(max_size=120))
    ranges = []
    position = 0
    for _ in range(draw(st.integers(0, 4))):
        if position > len(body):
            break
        offset = draw(st.integers(position, len(body)))
        size = draw(st.integers(0, len(body) - offset))
        ranges.append((offset, size))
        position = offset + size
    return DaveFrame(
        ciphertext=body,
        tag=draw(st.binary(min_size=8, max_size=8)),
        nonce=draw(u32),
        unencrypted_ranges=tuple(ranges),
    )


@given(frames())
def test_frame_round_trip(frame):
    wire = frame.serialize()
    assert wire.endswith(MAGIC_MARKER)
    assert wire[-3] == frame.supplemental_size
    assert len(wire) == len(frame.ciphertext) + frame.supplemental_size
    assert DaveFrame.parse(wire) == frame
    assert is_dave_frame(wire)


def test_opus_frame_layout():
    frame = DaveFrame(ciphertext=b"\x01\x02\x03", tag=bytes(range(8)), nonce=1)
    assert frame.supplemental_size == 12
    assert frame.serialize() == b"\x01\x02\x03" + bytes(range(8)) + b"\x01" + b"\x0c" + b"\xfa\xfa"
    big = DaveFrame(ciphertext=b"", tag=bytes(8), nonce=300)
    assert big.supplemental_size == 13
    assert big.serialize() == bytes(8) + b"\xac\x02\x0d\xfa\xfa"
    assert DaveFrame(b"", bytes(8), 0x05000001).generation == 5


def test_frame_with_ranges_layout():
    frame = DaveFrame(ciphertext=bytes(10), tag=bytes(8), nonce=2, unencrypted_ranges=((0, 2),))
    wire = frame.serialize()
    assert wire[-6:] == b"\x02" + b"\x00\x02" + b"\x0e" + MAGIC_MARKER
    assert frame.supplemental_size == 14


def _frame(body: bytes, supplemental: bytes) -> bytes:
    """Build body ‖ tag ‖ supplemental ‖ supp_size ‖ FA FA with a consistent size byte."""
    supp = 8 + len(supplemental) + 3
    return body + bytes(8) + supplemental + bytes((supp,)) + MAGIC_MARKER


@pytest.mark.parametrize(
    "data",
    [
        b"",
        SILENCE_FRAME,
        bytes(10) + b"",
        b"\x00" * 8 + b"\x0b\xfa\xfa",  # supp_size 11: no room for the nonce
        bytes(20) + b"\x0c\xfa\xfb",  # wrong marker
        bytes(20) + b"\x0a\xfa\xfa",  # supp_size below the minimum
        bytes(8) + b"\x01\xff\xfa\xfa",  # supp_size larger than the frame
        _frame(b"", b"\x80"),  # truncated nonce
        _frame(b"", b"\x80\x80\x80\x80\x10"),  # nonce >= 2**32
        _frame(b"", b"\x80" * 12),  # overlong nonce
        _frame(bytes(4), b"\x01\x00"),  # range offset without size
        _frame(bytes(4), b"\x01\x00\x05"),  # range past the body
        _frame(bytes(4), b"\x01\x03\x02"),  # range past the body (3 + 2 > 4)
        _frame(bytes(9), b"\x01\x02\x02\x03\x01"),  # overlapping ranges
        _frame(bytes(9), b"\x01\x05\x01\x00\x01"),  # ranges out of order
        _frame(bytes(4), b"\x01\x00\xff"),  # truncated range size
    ],
)
def test_frame_check_rejects(data):
    with pytest.raises(DaveError):
        DaveFrame.parse(data)
    assert not is_dave_frame(data)


def test_frame_check_accepts_edges():
    assert DaveFrame.parse(_frame(b"", b"\x00")).nonce == 0
    assert DaveFrame.parse(_frame(bytes(4), b"\x01\x00\x04")).unencrypted_ranges == ((0, 4),)
    assert DaveFrame.parse(_frame(bytes(4), b"\x01\x02\x00\x02\x02")).unencrypted_ranges == (
        (2, 0),
        (2, 2),
    )
    assert DaveFrame.parse(_frame(b"", b"\xff\xff\xff\xff\x0f")).nonce == 0xFFFFFFFF


@given(frames(), st.integers(0, 0xFF))
def test_corrupted_size_byte(frame, size):
    wire = bytearray(frame.serialize())
    assume(size != wire[-3])
    wire[-3] = size
    # a different size byte either fails the check or splits the frame elsewhere
    if is_dave_frame(bytes(wire)):
        assert DaveFrame.parse(bytes(wire)).supplemental_size == size


@pytest.mark.parametrize(
    "frame",
    [
        DaveFrame(b"", bytes(7), 1),
        DaveFrame(b"", bytes(16), 1),
        DaveFrame(b"", bytes(8), -1),
        DaveFrame(b"", bytes(8), 1 << 32),
        DaveFrame(bytes(4), bytes(8), 1, ((0, 5),)),
        DaveFrame(bytes(4), bytes(8), 1, ((2, 1), (1, 1))),
        DaveFrame(bytes(4), bytes(8), 1, ((-1, 1),)),
        DaveFrame(bytes(1000), bytes(8), 1, tuple((i, 1) for i in range(0, 240, 2))),
    ],
)
def test_frame_serialize_rejects(frame):
    with pytest.raises(UsageError):
        frame.serialize()


def test_is_silence():
    assert is_silence(b"\xf8\xff\xfe")
    assert is_silence(bytearray(b"\xf8\xff\xfe"))  # type: ignore[arg-type]
    assert not is_silence(b"\xf8\xff\xfe\x00")
    assert not is_silence(b"\xf8\xff")
    assert not is_silence(b"")
    assert not is_dave_frame(SILENCE_FRAME)
