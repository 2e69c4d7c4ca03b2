"""RTP and RTCP framing for Discord voice (protocol reference §3.3-§3.6).

Everything here is pure byte handling: the RTP fixed header with its CSRC list
and extension preamble, RFC 8285 one-byte header extension elements, RTP
padding, the Opus silence frame and telling apart the kinds of datagram that
arrive on the voice UDP socket. Transport encryption lives in
:mod:`rxvoice.protocol.crypto`.

In the rtpsize encryption modes only the 4-byte extension *preamble*
(``0xBEDE`` + length) is in the clear header; the extension *body* is the start
of the encrypted plaintext, so :class:`RtpHeader` records the preamble and
:meth:`RtpPacket.from_plaintext` removes the body after decryption.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from rxvoice.errors import MalformedPacket, UsageError

__all__ = [
    "IP_DISCOVERY_SIZE",
    "KEEPALIVE_SIZE",
    "ONE_BYTE_EXTENSION_PROFILE",
    "OPUS_PAYLOAD_TYPE",
    "RTCP_PACKET_TYPES",
    "RTP_HEADER_SIZE",
    "RTP_VERSION",
    "SILENCE_FRAME",
    "DatagramKind",
    "ExtensionElement",
    "RtpHeader",
    "RtpPacket",
    "add_padding",
    "build_header",
    "classify",
    "is_rtcp",
    "parse_one_byte_extension",
    "split_extension",
    "strip_padding",
]

SILENCE_FRAME = b"\xf8\xff\xfe"
"""The 3-byte Opus silence frame; never DAVE-encrypted (§3.6)."""

OPUS_PAYLOAD_TYPE = 120
"""The RTP payload type Discord uses for Opus (``0x78``)."""

RTP_VERSION = 2
"""The only RTP version on the wire."""

ONE_BYTE_EXTENSION_PROFILE = 0xBEDE
"""The RFC 8285 one-byte header extension profile Discord's packets carry."""

RTCP_PACKET_TYPES = range(200, 207)
"""RTCP packet types seen on the voice socket: SR, RR, SDES, BYE, APP, RTPFB, PSFB."""

RTP_HEADER_SIZE = 12
"""The fixed RTP header: V/P/X/CC, M/PT, sequence, timestamp, SSRC."""

IP_DISCOVERY_SIZE = 74
"""Both IP discovery datagrams (request and response) are exactly this long."""

KEEPALIVE_SIZE = 8
"""A UDP keepalive: a 32-bit counter and four zero bytes."""

# V=2, P, X, CC | M, PT | sequence | timestamp | SSRC
_FIXED = struct.Struct(">BBHII")
# extension preamble: profile, length in 32-bit words
_PREAMBLE = struct.Struct(">HH")
_MAX_CSRCS = 15


@dataclass(frozen=True, slots=True)
class RtpHeader:
    """The clear part of an RTP header: fixed header, CSRCs, extension preamble.

    Attributes:
        sequence: The 16-bit sequence number.
        timestamp: The 32-bit timestamp (48 kHz units for Opus).
        ssrc: The 32-bit synchronisation source.
        payload_type: The 7-bit payload type (120 for Opus).
        marker: The M bit.
        padding: The P bit: the decrypted payload ends with RTP padding.
        csrcs: The contributing sources (at most 15).
        extension_profile: The extension profile (``0xBEDE`` on Discord), or
            ``None`` when the X bit is clear.
        extension_length: The extension body length in 32-bit words, as
            written in the preamble. In the rtpsize modes the body itself is
            the start of the encrypted plaintext, not part of this header.
    """

    sequence: int
    timestamp: int
    ssrc: int
    payload_type: int = OPUS_PAYLOAD_TYPE
    marker: bool = False
    padding: bool = False
    csrcs: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension_length: int = 0

    @property
    def size(self) -> int:
        """The clear header length in bytes, which is also the AEAD's AAD length."""
        return RTP_HEADER_SIZE + 4 * len(self.csrcs) + (0 if self.extension_profile is None else 4)

    @property
    def extension_size(self) -> int:
        """The extension body length in bytes (0 without an extension)."""
        return 0 if self.extension_profile is None else 4 * self.extension_length

    @classmethod
    def parse(cls, data: bytes) -> RtpHeader:
        """Parse the clear header at the start of an RTP datagram.

        Only the header is read; whatever follows (payload or ciphertext) is
        left alone, and the extension body is not required to be present.

        Args:
            data: The datagram (or at least its header).

        Returns:
            The parsed header; :attr:`size` says where it ends.

        Raises:
            MalformedPacket: ``data`` is shorter than 12 bytes, the version is
                not 2, or the CSRC list or extension preamble runs past the end.
        """
        n = len(data)
        if n < RTP_HEADER_SIZE:
            raise MalformedPacket(f"RTP packet too short ({n} bytes)")
        b0, b1, sequence, timestamp, ssrc = _FIXED.unpack_from(data)
        if b0 >> 6 != RTP_VERSION:
            raise MalformedPacket(f"RTP version {b0 >> 6}, expected 2")
        offset = RTP_HEADER_SIZE
        csrcs: tuple[int, ...] = ()
        cc = b0 & 0x0F
        if cc:
            offset += 4 * cc
            if n < offset:
                raise MalformedPacket(f"RTP CSRC list ({cc} entries) runs past the packet end")
            csrcs = struct.unpack_from(f">{cc}I", data, RTP_HEADER_SIZE)
        profile: int | None = None
        length = 0
        if b0 & 0x10:
            if n < offset + 4:
                raise MalformedPacket("RTP extension preamble runs past the packet end")
            profile, length = _PREAMBLE.unpack_from(data, offset)
        # Every received packet comes here: fill the slots directly rather than
        # through the frozen dataclass's __init__ (an object.__setattr__ per
        # field, twice as slow). The result is the same object.
        header = _new(cls)
        _set_sequence(header, sequence)
        _set_timestamp(header, timestamp)
        _set_ssrc(header, ssrc)
        _set_payload_type(header, b1 & 0x7F)
        _set_marker(header, b1 > 0x7F)
        _set_padding(header, (b0 & 0x20) != 0)
        _set_csrcs(header, csrcs)
        _set_extension_profile(header, profile)
        _set_extension_length(header, length)
        return header

    def serialize(self) -> bytes:
        """Encode the header (fixed part, CSRCs and extension preamble).

        Returns:
            :attr:`size` bytes.

        Raises:
            UsageError: A field is out of range (e.g. more than 15 CSRCs, a
                sequence outside 16 bits, a payload type outside 7 bits).
        """
        cc = len(self.csrcs)
        if cc > _MAX_CSRCS:
            raise UsageError(f"at most 15 CSRCs fit in an RTP header, got {cc}")
        if not 0 <= self.payload_type <= 0x7F:
            raise UsageError(f"RTP payload type must fit in 7 bits, got {self.payload_type}")
        b0 = 0x80 | (0x20 if self.padding else 0) | cc
        if self.extension_profile is not None:
            b0 |= 0x10
        b1 = (0x80 if self.marker else 0) | self.payload_type
        try:
            out = _FIXED.pack(b0, b1, self.sequence, self.timestamp, self.ssrc)
            if cc:
                out += struct.pack(f">{cc}I", *self.csrcs)
            if self.extension_profile is not None:
                out += _PREAMBLE.pack(self.extension_profile, self.extension_length)
        except struct.error as exc:
            raise UsageError(f"RTP header field out of range: {exc}") from None
        return out


# The slot setters RtpHeader.parse uses (see there).
_new = object.__new__
_set_sequence = RtpHeader.__dict__["sequence"].__set__
_set_timestamp = RtpHeader.__dict__["timestamp"].__set__
_set_ssrc = RtpHeader.__dict__["ssrc"].__set__
_set_payload_type = RtpHeader.__dict__["payload_type"].__set__
_set_marker = RtpHeader.__dict__["marker"].__set__
_set_padding = RtpHeader.__dict__["padding"].__set__
_set_csrcs = RtpHeader.__dict__["csrcs"].__set__
_set_extension_profile = RtpHeader.__dict__["extension_profile"].__set__
_set_extension_length = RtpHeader.__dict__["extension_length"].__set__


def build_header(
    sequence: int,
    timestamp: int,
    ssrc: int,
    *,
    marker: bool = False,
    payload_type: int = OPUS_PAYLOAD_TYPE,
) -> bytes:
    """Build a plain 12-byte RTP header (V=2, no padding, CSRC or extension).

    This is what a client sends (``80 78 seq ts ssrc`` for Opus) and what
    :attr:`rxvoice.events.AudioFrame.frame` starts with.

    Args:
        sequence: The 16-bit sequence number.
        timestamp: The 32-bit timestamp.
        ssrc: The 32-bit SSRC.
        marker: The M bit.
        payload_type: The 7-bit payload type.

    Returns:
        12 bytes.

    Raises:
        UsageError: A field is out of range.
    """
    if not 0 <= payload_type <= 0x7F:
        raise UsageError(f"RTP payload type must fit in 7 bits, got {payload_type}")
    try:
        return _FIXED.pack(0x80, (0x80 if marker else 0) | payload_type, sequence, timestamp, ssrc)
    except struct.error as exc:
        raise UsageError(f"RTP header field out of range: {exc}") from None


@dataclass(frozen=True, slots=True)
class ExtensionElement:
    """One RFC 8285 header extension element.

    Attributes:
        id: The local identifier (1-14 for one-byte elements).
        data: The element's data (1-16 bytes for one-byte elements).
    """

    id: int
    data: bytes


def parse_one_byte_extension(body: bytes) -> tuple[ExtensionElement, ...]:
    """Parse the body of a ``0xBEDE`` (RFC 8285 one-byte header) extension.

    Each element is one header byte (``id << 4 | (len - 1)``) followed by
    ``len`` data bytes; ``0x00`` bytes between elements are padding. An
    element with id 15 ends parsing (RFC 8285 §4.2), and the rest is ignored.

    Args:
        body: The extension body (``4 * length`` bytes after the preamble).

    Returns:
        The elements in wire order.

    Raises:
        MalformedPacket: An element runs past the end of the body, or a byte
            has the reserved id 0 with a non-zero length.
    """
    elements: list[ExtensionElement] = []
    i = 0
    n = len(body)
    while i < n:
        b = body[i]
        if b == 0:  # padding
            i += 1
            continue
        ident = b >> 4
        if ident == 15:
            break
        if ident == 0:
            raise MalformedPacket("RTP extension element with reserved id 0")
        length = (b & 0x0F) + 1
        end = i + 1 + length
        if end > n:
            raise MalformedPacket(f"RTP extension element {ident} runs past the extension end")
        elements.append(ExtensionElement(ident, bytes(body[i + 1 : end])))
        i = end
    return tuple(elements)


def strip_padding(payload: bytes) -> bytes:
    """Remove RTP padding (P=1): the last byte counts the bytes to drop.

    Args:
        payload: The decrypted payload, padding included.

    Returns:
        The payload without its padding.

    Raises:
        MalformedPacket: The payload is empty, or the count is 0 or larger
            than the payload.
    """
    if not payload:
        raise MalformedPacket("RTP padding flag set on an empty payload")
    count = payload[-1]
    if count == 0 or count > len(payload):
        raise MalformedPacket(f"invalid RTP padding count {count} for {len(payload)} bytes")
    return payload[:-count]


def add_padding(payload: bytes, count: int) -> bytes:
    """Append ``count`` bytes of RTP padding (the inverse of :func:`strip_padding`).

    Args:
        payload: The payload to pad.
        count: How many bytes to add, 1-255; the last one holds ``count``.

    Returns:
        ``payload`` followed by ``count - 1`` zero bytes and the count byte.

    Raises:
        UsageError: ``count`` is not in 1-255.
    """
    if not 1 <= count <= 0xFF:
        raise UsageError(f"RTP padding count must be 1-255, got {count}")
    return payload + bytes(count - 1) + bytes((count,))


def split_extension(header: RtpHeader, plaintext: bytes) -> tuple[bytes, bytes]:
    """Split a decrypted plaintext into the extension body and the payload.

    In the rtpsize modes the extension body (``4 * extension_length`` bytes)
    is the start of the plaintext; without an extension the plaintext is all
    payload. Padding must already have been removed.

    Args:
        header: The packet's parsed header.
        plaintext: The decrypted bytes after the clear header.

    Returns:
        ``(extension_body, payload)``.

    Raises:
        MalformedPacket: The plaintext is shorter than the extension body.
    """
    if header.extension_profile is None:
        return b"", plaintext
    size = 4 * header.extension_length
    if size > len(plaintext):
        raise MalformedPacket(
            f"RTP extension body ({size} bytes) longer than the payload ({len(plaintext)})"
        )
    return plaintext[:size], plaintext[size:]


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """A transport-decrypted RTP packet.

    Attributes:
        header: The clear header as received.
        payload: The Opus frame, or a DAVE frame still to be E2EE-decrypted;
            padding and the extension body are removed.
        extension: The extension body that was stripped (empty without one).
    """

    header: RtpHeader
    payload: bytes
    extension: bytes = b""

    @classmethod
    def from_plaintext(cls, header: RtpHeader, plaintext: bytes) -> RtpPacket:
        """Build a packet from a header and its decrypted plaintext.

        Removes RTP padding first (when P=1) and then the extension body (when
        X=1), in the order discord.js uses (§3.5).

        Args:
            header: The packet's parsed header.
            plaintext: The AEAD plaintext (extension body, payload, padding).

        Returns:
            The packet.

        Raises:
            MalformedPacket: The padding count or extension length does not fit.
        """
        if header.padding:
            plaintext = strip_padding(plaintext)
        extension = b""
        if header.extension_profile is not None:
            extension, plaintext = split_extension(header, plaintext)
        # Every received packet comes here: slots filled directly, as in RtpHeader.parse.
        packet = _new(cls)
        _set_packet_header(packet, header)
        _set_packet_payload(packet, plaintext)
        _set_packet_extension(packet, extension)
        return packet

    def frame(self) -> bytes:
        """Return a plain 12-byte header followed by the payload.

        The header keeps the marker, payload type, sequence, timestamp and SSRC
        but has no padding, CSRCs or extension: the layout
        :attr:`rxvoice.events.AudioFrame.frame` carries.

        Returns:
            The rebuilt RTP packet bytes.

        Raises:
            UsageError: A header field is out of range (only possible for a
                hand-built header; parsed ones always fit).
        """
        h = self.header
        return (
            build_header(
                h.sequence, h.timestamp, h.ssrc, marker=h.marker, payload_type=h.payload_type
            )
            + self.payload
        )


_set_packet_header = RtpPacket.__dict__["header"].__set__
_set_packet_payload = RtpPacket.__dict__["payload"].__set__
_set_packet_extension = RtpPacket.__dict__["extension"].__set__


class DatagramKind(enum.Enum):
    """What a datagram received on the voice UDP socket is (§3.4)."""

    RTP = "rtp"
    RTCP = "rtcp"
    IP_DISCOVERY = "ip_discovery"
    KEEPALIVE = "keepalive"
    UNKNOWN = "unknown"


def is_rtcp(datagram: bytes) -> bool:
    """Return whether the datagram looks like RTCP: V=2 and packet type 200-206.

    This is the byte test alone; :func:`classify` tests for IP discovery
    replies and 8-byte keepalives first.

    Args:
        datagram: Any received bytes.

    Returns:
        ``True`` for an RTCP-looking datagram. Never raises.
    """
    return len(datagram) >= 2 and datagram[0] >> 6 == RTP_VERSION and 200 <= datagram[1] <= 206


def classify(datagram: bytes) -> DatagramKind:
    """Tell what kind of datagram arrived on the voice socket (§3.4).

    The order matters: an IP discovery reply is 74 bytes with type 2; an
    8-byte datagram is a keepalive (or ping) echo; RTCP is tested before RTP
    because the marker bit makes byte 1 of an RTP packet ambiguous with RTCP
    packet types.

    Args:
        datagram: Any received bytes.

    Returns:
        The kind; :attr:`DatagramKind.UNKNOWN` for anything else. Never raises.
    """
    n = len(datagram)
    if n == IP_DISCOVERY_SIZE and datagram[0] == 0 and datagram[1] == 0x02:
        return DatagramKind.IP_DISCOVERY
    if n == KEEPALIVE_SIZE:
        # An 8-byte RTCP packet (an empty receiver report, a BYE) says so in
        # its length field (1 word after the first) and carries an SSRC; a
        # keepalive is a u32 counter then four zero bytes.
        rtcp = datagram[0] >> 6 == RTP_VERSION and 200 <= datagram[1] <= 206
        if not (rtcp and datagram[2:4] == b"\x00\x01" and any(datagram[4:8])):
            return DatagramKind.KEEPALIVE
    if n >= 2 and datagram[0] >> 6 == RTP_VERSION:
        if 200 <= datagram[1] <= 206:
            return DatagramKind.RTCP
        if n > RTP_HEADER_SIZE:
            return DatagramKind.RTP
    return DatagramKind.UNKNOWN
