"""UDP IP discovery and keepalive datagrams (protocol reference §3.1, §3.2).

IP discovery is one 74-byte request from the client (type 1, carrying its
SSRC) and one 74-byte response from the server (type 2, carrying the client's
external address and port as the server saw them). All its integers are
big-endian. The keepalive is an 8-byte datagram: a little-endian u32 counter
followed by four zero bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from rxvoice.errors import MalformedPacket, UsageError
from rxvoice.protocol.rtp import IP_DISCOVERY_SIZE, KEEPALIVE_SIZE

__all__ = [
    "IP_DISCOVERY_LENGTH",
    "IP_DISCOVERY_SIZE",
    "IP_DISCOVERY_REQUEST",
    "IP_DISCOVERY_RESPONSE",
    "KEEPALIVE_SIZE",
    "IpDiscoveryRequest",
    "IpDiscoveryResponse",
    "Keepalive",
]

IP_DISCOVERY_LENGTH = 70
"""The length field: the datagram size minus the 4-byte type and length."""

IP_DISCOVERY_REQUEST = 1
IP_DISCOVERY_RESPONSE = 2

_ADDRESS_SIZE = 64
# type, length, SSRC, address (64 bytes, NUL-padded), port
_DISCOVERY = struct.Struct(">HHI64sH")
_KEEPALIVE = struct.Struct("<I4x")
_U32 = 1 << 32


def _check_framing(data: bytes, expected_type: int) -> tuple[int, bytes, int]:
    """Check size, type and length of a discovery datagram.

    Returns:
        ``(ssrc, address_field, port)``.

    Raises:
        MalformedPacket: Wrong size, type or length field.
    """
    if len(data) != IP_DISCOVERY_SIZE:
        raise MalformedPacket(f"IP discovery datagram must be 74 bytes, got {len(data)}")
    kind, length, ssrc, address, port = _DISCOVERY.unpack(data)
    if kind != expected_type:
        raise MalformedPacket(f"IP discovery type {kind}, expected {expected_type}")
    if length != IP_DISCOVERY_LENGTH:
        raise MalformedPacket(f"IP discovery length field {length}, expected 70")
    return ssrc, address, port


def _check_ssrc(ssrc: int) -> None:
    if not 0 <= ssrc < _U32:
        raise UsageError(f"SSRC must be a 32-bit unsigned integer, got {ssrc}")


@dataclass(frozen=True, slots=True)
class IpDiscoveryRequest:
    """The client's IP discovery request (type 1).

    Attributes:
        ssrc: The client's SSRC from Ready (op 2).
    """

    ssrc: int

    @classmethod
    def parse(cls, data: bytes) -> IpDiscoveryRequest:
        """Parse a request (what a server receives).

        The address and port fields carry nothing in a request (clients send
        zeros) and are ignored.

        Args:
            data: The 74-byte datagram.

        Returns:
            The request.

        Raises:
            MalformedPacket: Wrong size, type or length field.
        """
        ssrc, _, _ = _check_framing(data, IP_DISCOVERY_REQUEST)
        return cls(ssrc)

    def serialize(self) -> bytes:
        """Encode the request: type 1, length 70, SSRC, zeros.

        Returns:
            74 bytes.

        Raises:
            UsageError: The SSRC does not fit in 32 bits.
        """
        _check_ssrc(self.ssrc)
        return _DISCOVERY.pack(IP_DISCOVERY_REQUEST, IP_DISCOVERY_LENGTH, self.ssrc, b"", 0)


@dataclass(frozen=True, slots=True)
class IpDiscoveryResponse:
    """The server's IP discovery response (type 2).

    Attributes:
        ssrc: The SSRC echoed from the request.
        address: The client's external IP address as text (IPv4 on Discord).
        port: The client's external UDP port.
    """

    ssrc: int
    address: str
    port: int

    @classmethod
    def parse(cls, data: bytes) -> IpDiscoveryResponse:
        """Parse a response (what a client receives).

        The address is read from offset 8 up to the first NUL, as discord.js
        does; bytes after the NUL are ignored.

        Args:
            data: The 74-byte datagram.

        Returns:
            The response.

        Raises:
            MalformedPacket: Wrong size, type or length field; no NUL in the
                address field; an address that is not ASCII text of an IP.
        """
        ssrc, field, port = _check_framing(data, IP_DISCOVERY_RESPONSE)
        end = field.find(b"\x00")
        if end < 0:
            raise MalformedPacket("IP discovery address is not NUL-terminated")
        try:
            address = field[:end].decode("ascii")
            # Validates the text and rejects garbage before it reaches op 1.
            ipaddress.ip_address(address)
        except ValueError:  # UnicodeDecodeError is a ValueError
            raise MalformedPacket("IP discovery address is not an IP address") from None
        return cls(ssrc, address, port)

    def serialize(self) -> bytes:
        """Encode the response: type 2, length 70, SSRC, address, port.

        Returns:
            74 bytes.

        Raises:
            UsageError: The SSRC or port is out of range, or the address is
                not an IP address.
        """
        _check_ssrc(self.ssrc)
        if not 0 <= self.port <= 0xFFFF:
            raise UsageError(f"port must be 0-65535, got {self.port}")
        try:
            raw = self.address.encode("ascii")
            ipaddress.ip_address(self.address)
        except (AttributeError, ValueError):
            raise UsageError(f"not an IP address: {self.address!r}") from None
        # An IPv6 scope id can make the text arbitrarily long; keep room for the NUL.
        if len(raw) >= _ADDRESS_SIZE:
            raise UsageError("IP address text longer than 63 bytes")
        return _DISCOVERY.pack(
            IP_DISCOVERY_RESPONSE, IP_DISCOVERY_LENGTH, self.ssrc, raw, self.port
        )


@dataclass(frozen=True, slots=True)
class Keepalive:
    """The 8-byte UDP keepalive a client sends every 5 s (§3.2).

    Attributes:
        counter: The keepalive counter; written modulo 2**32.
    """

    counter: int

    @classmethod
    def parse(cls, data: bytes) -> Keepalive:
        """Parse a keepalive.

        Args:
            data: The 8-byte datagram.

        Returns:
            The keepalive.

        Raises:
            MalformedPacket: Not 8 bytes, or the last 4 bytes are not zero.
        """
        if len(data) != KEEPALIVE_SIZE:
            raise MalformedPacket(f"keepalive must be 8 bytes, got {len(data)}")
        if data[4:] != b"\x00\x00\x00\x00":
            raise MalformedPacket("keepalive bytes 4-7 must be zero")
        (counter,) = _KEEPALIVE.unpack(data)
        return cls(counter)

    def serialize(self) -> bytes:
        """Encode the keepalive: u32 little-endian counter, then 4 zero bytes.

        Returns:
            8 bytes.

        Raises:
            UsageError: The counter is negative.
        """
        if self.counter < 0:
            raise UsageError(f"keepalive counter must be non-negative, got {self.counter}")
        return _KEEPALIVE.pack(self.counter % _U32)

    def next(self) -> Keepalive:
        """Return the following keepalive (counter + 1, wrapping at 2**32)."""
        return Keepalive((self.counter + 1) % _U32)
