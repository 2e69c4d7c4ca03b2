"""Inspection of DAVE end-to-end encrypted media frames (protocol reference §5.9).

The cryptography itself is done by the ``davey`` package; this module only
reads and writes the frame layout, so the rest of rxvoice can tell protocol
frames from plain Opus without keys::

    | body (ciphertext, plus unencrypted ranges for video) | tag (8) |
    | ULEB128(nonce) | ULEB128 (offset, size) pairs | supp_size (1) | FA FA |
                     |<------------ supplemental bytes (supp_size) ------->|
    ^ supplemental bytes start at the tag

For Opus the range list is always empty, so ``supp_size`` is
``8 + len(ULEB128(nonce)) + 3`` (12 while the nonce is below 128).
"""

from __future__ import annotations

from dataclasses import dataclass

from rxvoice.errors import DaveError, UsageError
from rxvoice.protocol.rtp import SILENCE_FRAME

__all__ = [
    "MAGIC_MARKER",
    "MIN_SUPPLEMENTAL_SIZE",
    "TRUNCATED_TAG_SIZE",
    "ULEB128_MAX_SIZE",
    "DaveFrame",
    "is_dave_frame",
    "is_silence",
    "uleb128_decode",
    "uleb128_encode",
]

MAGIC_MARKER = b"\xfa\xfa"
"""The two bytes every DAVE protocol frame ends with."""

TRUNCATED_TAG_SIZE = 8
"""DAVE truncates the AES-128-GCM tag to 64 bits."""

MIN_SUPPLEMENTAL_SIZE = TRUNCATED_TAG_SIZE + 1 + len(MAGIC_MARKER)
"""The smallest ``supp_size`` a frame may declare (tag, size byte, marker), as libdave checks."""

ULEB128_MAX_SIZE = 10
"""A ULEB128 holding a 64-bit value takes at most 10 bytes; longer is refused."""

_U32 = 1 << 32
_U64 = 1 << 64


def uleb128_encode(n: int) -> bytes:
    """Encode a non-negative integer as unsigned LEB128.

    Seven bits per byte, least significant group first, ``0x80`` on every
    byte but the last: 1 → ``01``, 300 → ``AC 02``.

    Args:
        n: The value, 0 <= n < 2**64.

    Returns:
        The minimal encoding (1-10 bytes).

    Raises:
        UsageError: ``n`` is negative or does not fit in 64 bits.
    """
    if not 0 <= n < _U64:
        raise UsageError(f"ULEB128 value must be in [0, 2**64), got {n}")
    out = bytearray()
    while n >= 0x80:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def _decode(data: bytes, offset: int, end: int) -> tuple[int, int]:
    """Decode one ULEB128 from ``data[offset:end]`` without slicing."""
    value = 0
    shift = 0
    i = offset
    # Bounded loop: never more than ULEB128_MAX_SIZE bytes, whatever the input.
    limit = min(end, offset + ULEB128_MAX_SIZE)
    while i < limit:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            if value >= _U64:
                raise DaveError("ULEB128 value does not fit in 64 bits")
            return value, i
        shift += 7
    if i - offset >= ULEB128_MAX_SIZE:
        raise DaveError("ULEB128 longer than 10 bytes")
    raise DaveError("truncated ULEB128")


def uleb128_decode(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode one unsigned LEB128 value.

    Non-minimal encodings (e.g. ``80 00`` for 0) are accepted, as libdave
    accepts them; values beyond 64 bits and encodings longer than 10 bytes
    are refused, so the loop is bounded whatever the input.

    Args:
        data: The buffer.
        offset: Where the value starts.

    Returns:
        ``(value, next_offset)``.

    Raises:
        DaveError: The value is truncated, longer than 10 bytes, or does not
            fit in 64 bits.
        UsageError: ``offset`` is negative.
    """
    if offset < 0:
        raise UsageError(f"offset must be non-negative, got {offset}")
    return _decode(data, offset, len(data))


def _check_ranges(ranges: tuple[tuple[int, int], ...], body_size: int) -> str | None:
    """Return why ``ranges`` are invalid for a body of ``body_size`` bytes, or ``None``."""
    previous_end = 0
    for offset, size in ranges:
        if offset < 0 or size < 0:
            return "negative unencrypted range"
        if offset < previous_end:
            return "unencrypted ranges overlap or are out of order"
        previous_end = offset + size
        if previous_end > body_size:
            return "unencrypted range runs past the frame body"
    return None


@dataclass(frozen=True, slots=True)
class DaveFrame:
    """The parts of a DAVE protocol frame.

    Attributes:
        ciphertext: The frame body before the tag: the encrypted bytes, with
            the unencrypted ranges (video only) left in place.
        tag: The 8-byte truncated AES-GCM tag.
        nonce: The 32-bit truncated nonce (its top 8 bits are the key
            generation).
        unencrypted_ranges: ``(offset, size)`` pairs into the body, ascending
            and non-overlapping; empty for Opus.
    """

    ciphertext: bytes
    tag: bytes
    nonce: int
    unencrypted_ranges: tuple[tuple[int, int], ...] = ()

    @property
    def generation(self) -> int:
        """The key-ratchet generation the nonce selects (``nonce >> 24``)."""
        return self.nonce >> 24

    @property
    def supplemental_size(self) -> int:
        """The ``supp_size`` byte: tag, nonce, ranges, the size byte and the marker."""
        size = TRUNCATED_TAG_SIZE + len(uleb128_encode(self.nonce)) + 1 + len(MAGIC_MARKER)
        for offset, length in self.unencrypted_ranges:
            size += len(uleb128_encode(offset)) + len(uleb128_encode(length))
        return size

    @classmethod
    def parse(cls, frame: bytes) -> DaveFrame:
        """Parse a frame, applying the protocol-frame check of §5.9.

        The check: at least 11 bytes; ends in ``FA FA``; ``supp_size`` at
        least 11 and at most the frame size; the nonce and range ULEB128s
        parse and fill the supplemental bytes exactly; the nonce fits in 32
        bits; ranges ascending, non-overlapping and inside the frame body
        (stricter than libdave, which bounds them by the whole frame).

        Args:
            frame: An Opus payload after transport decryption.

        Returns:
            The frame's parts.

        Raises:
            DaveError: The frame fails the check.
        """
        trailer = _read_trailer(frame)
        if isinstance(trailer, str):
            raise DaveError(trailer)
        start, nonce, ranges = trailer
        return cls(
            bytes(frame[:start]), bytes(frame[start : start + TRUNCATED_TAG_SIZE]), nonce, ranges
        )

    def serialize(self) -> bytes:
        """Encode the frame with its supplemental bytes and marker.

        Returns:
            ``ciphertext ‖ tag ‖ ULEB128(nonce) ‖ ranges ‖ supp_size ‖ FA FA``.

        Raises:
            UsageError: The tag is not 8 bytes, the nonce does not fit in 32
                bits, the ranges are invalid, or the supplemental bytes exceed
                255.
        """
        if len(self.tag) != TRUNCATED_TAG_SIZE:
            raise UsageError(f"DAVE tag must be 8 bytes, got {len(self.tag)}")
        if not 0 <= self.nonce < _U32:
            raise UsageError(f"DAVE nonce must fit in 32 bits, got {self.nonce}")
        problem = _check_ranges(self.unencrypted_ranges, len(self.ciphertext))
        if problem is not None:
            raise UsageError(problem)
        parts = [self.ciphertext, self.tag, uleb128_encode(self.nonce)]
        for offset, size in self.unencrypted_ranges:
            parts.append(uleb128_encode(offset))
            parts.append(uleb128_encode(size))
        supp = self.supplemental_size
        if supp > 0xFF:
            raise UsageError(f"DAVE supplemental bytes too long ({supp})")
        parts.append(bytes((supp,)))
        parts.append(MAGIC_MARKER)
        return b"".join(parts)


_Trailer = tuple[int, int, tuple[tuple[int, int], ...]]


def _read_trailer(frame: bytes) -> _Trailer | str:
    """The protocol-frame check of :meth:`DaveFrame.parse`, without raising or copying.

    Returns:
        ``(where the supplemental bytes start, nonce, unencrypted ranges)``,
        or why ``frame`` is not a DAVE frame.
    """
    n = len(frame)
    if n < MIN_SUPPLEMENTAL_SIZE:
        return f"frame too short for DAVE ({n} bytes)"
    if frame[-1] != 0xFA or frame[-2] != 0xFA:  # MAGIC_MARKER: most plain Opus stops here
        return "frame does not end with the DAVE magic marker"
    supp = frame[-3]
    if supp < MIN_SUPPLEMENTAL_SIZE or supp > n:
        return f"DAVE supplemental size {supp} out of bounds for {n} bytes"
    start = n - supp
    end = n - 3  # the size byte and the marker
    try:
        nonce, pos = _decode(frame, start + TRUNCATED_TAG_SIZE, end)
        if nonce >= _U32:
            return "DAVE nonce does not fit in 32 bits"
        if pos == end:  # no unencrypted ranges: every Opus frame
            return start, nonce, ()
        ranges: list[tuple[int, int]] = []
        while pos < end:
            offset, pos = _decode(frame, pos, end)
            size, pos = _decode(frame, pos, end)
            ranges.append((offset, size))
    except DaveError as exc:
        return str(exc)
    result = tuple(ranges)
    problem = _check_ranges(result, start)
    if problem is not None:
        return problem
    return start, nonce, result


def is_dave_frame(frame: bytes) -> bool:
    """Return whether ``frame`` passes the DAVE protocol-frame check.

    Args:
        frame: An Opus payload after transport decryption.

    Returns:
        ``True`` when :meth:`DaveFrame.parse` would accept it. Never raises.
    """
    return type(_read_trailer(frame)) is tuple


def is_silence(frame: bytes) -> bool:
    """Return whether ``frame`` is exactly the Opus silence frame ``F8 FF FE``.

    Silence frames are never DAVE-encrypted and are always passed through by
    DAVE decryptors (§3.6).

    Args:
        frame: An Opus payload.

    Returns:
        ``True`` on an exact 3-byte match. Never raises.
    """
    return frame == SILENCE_FRAME
