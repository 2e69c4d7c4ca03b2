"""Transport encryption between a client and the SFU (protocol reference §4).

Both supported modes are "rtpsize" AEADs with the same packet layout::

    | clear header (12 + 4*CC + 4 if X) | AEAD(ext body + payload + padding) ‖ tag16 | nonce32 |
    |<------------- AAD --------------->|

The 4-byte nonce suffix is a big-endian counter written at the *start* of the
full nonce, zero-padded to 12 bytes (AES-256-GCM) or 24 bytes
(XChaCha20-Poly1305). DAVE end-to-end encryption, when active, happens inside
the payload and is not this module's business.
"""

from __future__ import annotations

import enum
import secrets
import struct
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from rxvoice.errors import DecryptionError, MalformedPacket, ProtocolError, UsageError
from rxvoice.protocol.rtp import (
    RTP_HEADER_SIZE,
    RTP_VERSION,
    RtpHeader,
    RtpPacket,
    build_header,
    strip_padding,
)

__all__ = [
    "KEY_SIZE",
    "NONCE_SUFFIX_SIZE",
    "TAG_SIZE",
    "EncryptionMode",
    "OpenFailure",
    "RtpCrypto",
    "TransportCipher",
    "choose_mode",
]

KEY_SIZE = 32
"""The transport key size (op 4 ``secret_key``) in bytes, for both modes."""

TAG_SIZE = 16
"""The AEAD tag size in bytes, for both modes."""

NONCE_SUFFIX_SIZE = 4
"""The nonce counter appended to every packet."""

_U32 = 1 << 32
_U16 = 1 << 16
_OVERHEAD = TAG_SIZE + NONCE_SUFFIX_SIZE
_U16_AT = struct.Struct(">H").unpack_from


class EncryptionMode(enum.StrEnum):
    """The transport encryption modes Discord still accepts (§4.1)."""

    AEAD_AES256_GCM_RTPSIZE = "aead_aes256_gcm_rtpsize"
    AEAD_XCHACHA20_POLY1305_RTPSIZE = "aead_xchacha20_poly1305_rtpsize"


def choose_mode(offered: Iterable[str]) -> EncryptionMode:
    """Pick the transport mode from Ready's ``modes`` list.

    AES-256-GCM is preferred whatever the order of the list; XChaCha20-Poly1305
    (which every server must offer) is the fallback.

    Args:
        offered: The mode names the server offers.

    Returns:
        The mode to send in op 1 (Select Protocol).

    Raises:
        ProtocolError: Neither supported mode is offered.
    """
    # The list comes from the server: ignore anything that is not a string.
    names = {name for name in offered if isinstance(name, str)}
    for mode in EncryptionMode:  # definition order is preference order
        if mode.value in names:
            return mode
    raise ProtocolError(f"server offers no supported encryption mode (offered: {sorted(names)})")


class OpenFailure(enum.Enum):
    """Why :meth:`TransportCipher.try_open` could not open a datagram."""

    MALFORMED = "malformed"
    """Not a well-formed rtpsize RTP packet: a bad header, too short for the
    tag and nonce, or (once authenticated) bad padding or extension length."""
    UNDECRYPTABLE = "undecryptable"
    """Authentication failed: a wrong key, a corrupted or a forged packet."""


class TransportCipher:
    """One transport AEAD keyed with the session's ``secret_key``.

    The object holds no counters; :class:`RtpCrypto` adds those for sending.
    The key never appears in ``repr`` or ``str``.

    Args:
        mode: The negotiated mode.
        key: The 32-byte ``secret_key`` from op 4.

    Raises:
        UsageError: Unknown mode or a key that is not 32 bytes.
    """

    __slots__ = ("_aes", "_key", "_mode", "_pad")

    def __init__(self, mode: EncryptionMode, key: bytes) -> None:
        try:
            self._mode = EncryptionMode(mode)
        except ValueError:
            raise UsageError(f"unsupported encryption mode {mode!r}") from None
        if not isinstance(key, bytes | bytearray | memoryview) or len(key) != KEY_SIZE:
            raise UsageError("transport key must be 32 bytes")
        self._key = bytes(key)
        self._aes: AESGCM | None = None
        if self._mode is EncryptionMode.AEAD_AES256_GCM_RTPSIZE:
            # One AESGCM per key: it keeps the expanded key schedule.
            self._aes = AESGCM(self._key)
            self._pad = bytes(12 - NONCE_SUFFIX_SIZE)
        else:
            self._pad = bytes(24 - NONCE_SUFFIX_SIZE)

    @property
    def mode(self) -> EncryptionMode:
        """The encryption mode."""
        return self._mode

    def __repr__(self) -> str:
        return f"TransportCipher(mode={self._mode.value!r})"

    __str__ = __repr__

    def seal(self, header: bytes, plaintext: bytes, nonce: int) -> bytes:
        """Encrypt one packet.

        Args:
            header: The clear header (fixed header, CSRCs and the extension
                preamble when X=1); it is authenticated, not encrypted.
            plaintext: The extension body (when X=1), the payload and any RTP
                padding.
            nonce: The 32-bit nonce counter for this packet.

        Returns:
            ``header ‖ ciphertext ‖ tag16 ‖ nonce (4 bytes, big-endian)``.

        Raises:
            UsageError: ``nonce`` does not fit in 32 bits.
        """
        if not 0 <= nonce < _U32:
            raise UsageError(f"nonce must be a 32-bit unsigned integer, got {nonce}")
        suffix = nonce.to_bytes(NONCE_SUFFIX_SIZE, "big")
        if self._aes is not None:
            sealed = self._aes.encrypt(suffix + self._pad, plaintext, header)
        else:
            sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
                bytes(plaintext), bytes(header), suffix + self._pad, self._key
            )
        return b"".join((header, sealed, suffix))

    def open(self, datagram: bytes) -> RtpPacket:
        """Decrypt one RTP datagram.

        Padding (P=1) and then the extension body (X=1) are removed from the
        plaintext, as discord.js does.

        Args:
            datagram: The received datagram.

        Returns:
            The packet; its ``payload`` is Opus or a DAVE frame.

        Raises:
            MalformedPacket: Not a valid RTP header, too short to hold the tag
                and nonce, or bad padding or extension length.
            DecryptionError: Authentication failed (wrong key, tampering).
        """
        result = self.try_open(datagram)
        if type(result) is RtpPacket:
            return result
        # The slow path, for callers that want the reason: say what is wrong.
        if type(datagram) is not bytes:
            datagram = bytes(datagram)
        header = RtpHeader.parse(datagram)  # raises on a bad header
        if len(datagram) < header.size + _OVERHEAD:
            raise MalformedPacket(
                f"encrypted RTP packet too short ({len(datagram)} bytes) for tag and nonce"
            )
        plaintext = self._decrypt(datagram, header.size)
        if plaintext is None:
            raise DecryptionError(
                f"transport decryption failed (ssrc={header.ssrc}, seq={header.sequence})"
            )
        return RtpPacket.from_plaintext(header, plaintext)  # raises on bad padding or extension

    def try_open(self, datagram: bytes) -> RtpPacket | OpenFailure:
        """Decrypt one RTP datagram, or say why not, without raising.

        :meth:`open` for the receive path: a flood of bad datagrams costs no
        exception object (beyond the one the AEAD library raises internally)
        and no message.

        Args:
            datagram: The received datagram.

        Returns:
            The packet, or why it could not be opened.
        """
        if type(datagram) is not bytes:  # a bytearray or memoryview from a user's stream
            datagram = bytes(datagram)
        n = len(datagram)
        if n < RTP_HEADER_SIZE:
            return OpenFailure.MALFORMED
        b0 = datagram[0]
        # The clear header's size (the AAD), from byte 0 alone: CSRCs and the extension preamble.
        hlen = RTP_HEADER_SIZE + 4 * (b0 & 0x0F) + (4 if b0 & 0x10 else 0)
        if b0 >> 6 != RTP_VERSION or n < hlen + _OVERHEAD:
            return OpenFailure.MALFORMED
        plaintext = self._decrypt(datagram, hlen)
        if plaintext is None:
            return OpenFailure.UNDECRYPTABLE
        header = RtpHeader.parse(datagram)  # cannot fail: the lengths were checked
        try:
            return RtpPacket.from_plaintext(header, plaintext)
        except MalformedPacket:  # authentic, but bad padding or extension length: rare
            return OpenFailure.MALFORMED

    def open_payload(self, datagram: bytes) -> bytes | OpenFailure:
        """The payload of one RTP datagram (Opus or a DAVE frame), or why not, without raising.

        :meth:`try_open` for the receive path, without the header objects: the
        caller reads the fixed header itself (one ``struct`` call), and padding
        and the extension body are removed as :meth:`RtpPacket.from_plaintext`
        does.

        Args:
            datagram: The received datagram.

        Returns:
            The payload, or why the datagram could not be opened.
        """
        if type(datagram) is not bytes:  # a bytearray or memoryview from a user's stream
            datagram = bytes(datagram)
        n = len(datagram)
        if n < RTP_HEADER_SIZE:
            return OpenFailure.MALFORMED
        b0 = datagram[0]
        hlen = RTP_HEADER_SIZE + 4 * (b0 & 0x0F) + (4 if b0 & 0x10 else 0)
        if b0 >> 6 != RTP_VERSION or n < hlen + _OVERHEAD:
            return OpenFailure.MALFORMED
        payload = self._decrypt(datagram, hlen)
        if payload is None:
            return OpenFailure.UNDECRYPTABLE
        if b0 & 0x20:  # padding (rare): the last byte counts it
            try:
                payload = strip_padding(payload)
            except MalformedPacket:
                return OpenFailure.MALFORMED
        if b0 & 0x10:  # the extension body starts the plaintext; the preamble gives its length
            size = 4 * _U16_AT(datagram, hlen - 2)[0]
            if size > len(payload):
                return OpenFailure.MALFORMED
            payload = payload[size:]
        return payload

    def _decrypt(self, datagram: bytes, hlen: int) -> bytes | None:
        """The AEAD step: the plaintext, or ``None`` when authentication fails.

        The one place on the receive path where an exception is raised for a
        bad packet (the AEAD libraries raise on a bad tag); it stays here.
        """
        nonce = datagram[-NONCE_SUFFIX_SIZE:] + self._pad
        aes = self._aes
        try:
            if aes is not None:
                return aes.decrypt(nonce, datagram[hlen:-NONCE_SUFFIX_SIZE], datagram[:hlen])
            return crypto_aead_xchacha20poly1305_ietf_decrypt(
                datagram[hlen:-NONCE_SUFFIX_SIZE], datagram[:hlen], nonce, self._key
            )
        except (InvalidTag, CryptoError):
            return None


class RtpCrypto:
    """The sending state of one voice connection: a cipher plus RTP counters.

    Each :meth:`seal_opus` increments the nonce *before* use (the first packet
    carries nonce 1, as discord.js does; wraps at 2**32), then advances the
    sequence by 1 (mod 2**16) and the timestamp by the frame's samples
    (mod 2**32).

    Args:
        mode: The negotiated mode.
        key: The 32-byte ``secret_key`` from op 4.
        ssrc: This client's SSRC from Ready.
        sequence: The first sequence number; random when ``None``.
        timestamp: The first timestamp; random when ``None``.
        nonce: The last nonce used; the next packet uses ``nonce + 1``.

    Raises:
        UsageError: Bad mode or key, or a counter out of range.
    """

    __slots__ = ("_cipher", "_nonce", "_sequence", "_ssrc", "_timestamp")

    def __init__(
        self,
        mode: EncryptionMode,
        key: bytes,
        ssrc: int,
        *,
        sequence: int | None = None,
        timestamp: int | None = None,
        nonce: int = 0,
    ) -> None:
        self._cipher = TransportCipher(mode, key)
        if sequence is None:
            sequence = secrets.randbelow(_U16)
        if timestamp is None:
            timestamp = secrets.randbelow(_U32)
        for name, value, limit in (
            ("ssrc", ssrc, _U32),
            ("sequence", sequence, _U16),
            ("timestamp", timestamp, _U32),
            ("nonce", nonce, _U32),
        ):
            if not 0 <= value < limit:
                raise UsageError(f"{name} out of range: {value}")
        self._ssrc = ssrc
        self._sequence = sequence
        self._timestamp = timestamp
        self._nonce = nonce

    @property
    def cipher(self) -> TransportCipher:
        """The underlying cipher (e.g. to seal packets with extensions)."""
        return self._cipher

    @property
    def mode(self) -> EncryptionMode:
        """The encryption mode."""
        return self._cipher.mode

    @property
    def ssrc(self) -> int:
        """The SSRC written into every sent packet."""
        return self._ssrc

    @property
    def sequence(self) -> int:
        """The sequence number the next packet will carry."""
        return self._sequence

    @property
    def timestamp(self) -> int:
        """The timestamp the next packet will carry."""
        return self._timestamp

    @property
    def nonce(self) -> int:
        """The last nonce used (0 before the first packet by default)."""
        return self._nonce

    def __repr__(self) -> str:
        return (
            f"RtpCrypto(mode={self.mode.value!r}, ssrc={self._ssrc}, "
            f"sequence={self._sequence}, timestamp={self._timestamp}, nonce={self._nonce})"
        )

    __str__ = __repr__

    def seal_opus(self, payload: bytes, *, samples: int = 960) -> bytes:
        """Build and encrypt the next packet (``80 78 seq ts ssrc``).

        Args:
            payload: The Opus frame (already DAVE-encrypted when DAVE is
                active; silence frames are sent as they are).
            samples: How many 48 kHz samples the frame covers (960 = 20 ms).

        Returns:
            The datagram to send.

        Raises:
            UsageError: ``samples`` is negative.
        """
        if samples < 0:
            raise UsageError(f"samples must be non-negative, got {samples}")
        nonce = (self._nonce + 1) % _U32
        datagram = self._cipher.seal(
            build_header(self._sequence, self._timestamp, self._ssrc), payload, nonce
        )
        self._nonce = nonce
        self._sequence = (self._sequence + 1) % _U16
        self._timestamp = (self._timestamp + samples) % _U32
        return datagram

    def advance_timestamp(self, samples: int) -> None:
        """Move the timestamp forward without sending (e.g. across a pause).

        Args:
            samples: How many 48 kHz samples to skip.

        Raises:
            UsageError: ``samples`` is negative.
        """
        if samples < 0:
            raise UsageError(f"samples must be non-negative, got {samples}")
        self._timestamp = (self._timestamp + samples) % _U32

    def open(self, datagram: bytes) -> RtpPacket:
        """Decrypt a received datagram; see :meth:`TransportCipher.open`.

        Args:
            datagram: The received datagram.

        Returns:
            The packet.

        Raises:
            MalformedPacket: A structural problem.
            DecryptionError: Authentication failed.
        """
        return self._cipher.open(datagram)
