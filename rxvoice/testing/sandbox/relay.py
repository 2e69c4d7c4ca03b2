"""The sandbox's UDP media server: an SFU that re-encrypts for each recipient (§7.3).

What it does with each datagram:

- a 74-byte IP discovery request (type 1) for a known SSRC: answer type 2,
  length 70, the SSRC echoed, the source IP NUL-padded and the source port;
  the source becomes the user's media address;
- RTP from a user who has sent op 5: decrypt with the sender's key and mode,
  then for every other client in the call rebuild the packet with the same
  SSRC, sequence and timestamp (no CSRCs; every other packet carries a
  ``0xBEDE`` audio-level extension when extensions are on), encrypt it with
  the recipient's key and mode under the relay's own nonce counter for that
  recipient, send it through the fault injector, and tell ``on_relayed``
  (when set) the recipient, SSRC and sequence. DAVE frames are opaque, except
  that they never go to a client without DAVE (§7.3: frames ending in
  ``FA FA`` are not forwarded to non-DAVE recipients). The sandbox's simulated
  speakers get nobody's media unless they listen (``add_speaker(listen=True)``):
  with many of them the copies alone would cost O(N²) encryptions every 20 ms,
  for media nobody checks;
- keepalives, RTCP and junk: counted and ignored.

Every ``rtcp_interval`` relayed packets a recipient also gets an encrypted
RTCP receiver report, so clients must filter RTCP as they do on Discord.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
from collections.abc import Callable
from typing import cast

from rxvoice.errors import MalformedPacket, ProtocolError
from rxvoice.protocol.daveframe import is_dave_frame
from rxvoice.protocol.ipdiscovery import (
    IP_DISCOVERY_REQUEST,
    IP_DISCOVERY_SIZE,
    IpDiscoveryRequest,
    IpDiscoveryResponse,
)
from rxvoice.protocol.rtp import ONE_BYTE_EXTENSION_PROFILE, DatagramKind, RtpHeader, classify
from rxvoice.testing.sandbox.faults import FaultInjector
from rxvoice.testing.sandbox.voice import Participant, VoiceServer

__all__ = ["AUDIO_LEVEL_EXTENSION", "RELAY_SSRC", "Relay"]

logger = logging.getLogger(__name__)

_U32 = 0xFFFF_FFFF

#: The SSRC the relay reports as in its RTCP receiver reports.
RELAY_SSRC = 1

#: One-byte extension body: element id 1 (audio level), 1 data byte (voice
#: activity bit + level 0x28 = -40 dBov), then padding to a 32-bit word.
AUDIO_LEVEL_EXTENSION = bytes((0x10, 0x80 | 0x28, 0x00, 0x00))

_REQUEST_PREFIX = struct.pack(">HH", IP_DISCOVERY_REQUEST, 70)


class Relay(asyncio.DatagramProtocol):
    """The UDP side of the sandbox.

    Args:
        server: The voice gateway whose sessions own the SSRCs and keys.
        injector: Faults for datagrams sent to clients.
        counters: Shared event counters.
        extensions: Add a ``0xBEDE`` extension to every other relayed packet.
        rtcp_interval: Send an RTCP receiver report after this many relayed
            packets per recipient (0: never).
        on_packet: Called after each datagram (wakes the sandbox's waiters).

    Attributes:
        on_relayed: Called as ``on_relayed(user_id, ssrc, sequence)`` right after
            each RTP packet sent to a client (e.g. to time its delivery); ``None``
            by default.
    """

    def __init__(
        self,
        server: VoiceServer,
        injector: FaultInjector,
        counters: collections.Counter[str],
        *,
        extensions: bool = True,
        rtcp_interval: int = 50,
        on_packet: Callable[[], None] | None = None,
    ) -> None:
        self._server = server
        self._injector = injector
        self._counters = counters
        self.extensions = extensions
        self.rtcp_interval = rtcp_interval
        self._on_packet = on_packet
        self.on_relayed: Callable[[str, int, int], None] | None = None
        self._transport: asyncio.DatagramTransport | None = None

    def __repr__(self) -> str:
        return f"Relay(extensions={self.extensions}, rtcp_interval={self.rtcp_interval})"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (asyncio callback)."""
        self._transport = cast("asyncio.DatagramTransport", transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the transport (asyncio callback)."""
        self._transport = None

    def error_received(self, exc: Exception) -> None:
        """Log ICMP errors (a client's port went away); never fatal."""
        self._counters["udp_errors"] += 1
        logger.debug("UDP error: %s", exc)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        """Handle one datagram (asyncio callback). Never raises."""
        address = (str(addr[0]), int(addr[1]))
        try:
            if len(data) == IP_DISCOVERY_SIZE and data.startswith(_REQUEST_PREFIX):
                self._discovery(data, address)
                return
            kind = classify(data)
            if kind is DatagramKind.RTP:
                self._relay(data, address)
            elif kind is DatagramKind.KEEPALIVE:
                # Counted and ignored, never answered (§3.2, §7.3): discord.js no
                # longer expects or measures a reply.
                self._counters["udp_keepalives"] += 1
            elif kind is DatagramKind.RTCP:
                self._counters["rtcp_received"] += 1
            else:
                self._counters["udp_junk"] += 1
        except Exception:
            self._counters["relay_errors"] += 1
            logger.exception("relay failed on a datagram")
        if self._on_packet is not None:
            self._on_packet()

    def _discovery(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            request = IpDiscoveryRequest.parse(data)
        except MalformedPacket:
            self._counters["udp_junk"] += 1
            return
        p = self._server.by_ssrc.get(request.ssrc)
        if p is None:
            self._counters["unknown_ssrc"] += 1
            return
        p.udp_addr = addr
        self._counters["ip_discovery"] += 1
        # Discovery replies bypass the fault injector: a client cannot start without one.
        self._sendto(IpDiscoveryResponse(request.ssrc, addr[0], addr[1]).serialize(), addr)

    def _relay(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            header = RtpHeader.parse(data)
        except MalformedPacket:
            self._counters["udp_junk"] += 1
            return
        sender = self._server.by_ssrc.get(header.ssrc)
        if sender is None:
            self._counters["unknown_ssrc"] += 1
            return
        if sender.cipher is None or not sender.announced:
            # §1.3: a client must send op 5 before audio; Discord drops it otherwise.
            self._counters["rtp_before_speaking"] += 1
            return
        try:
            packet = sender.cipher.open(data)
        except ProtocolError:
            self._counters["decrypt_failures"] += 1
            return
        if sender.udp_addr is None:
            sender.udp_addr = addr
        sender.packets_in += 1
        sender.last_sequence = header.sequence
        self._counters["rtp_received"] += 1
        payload = packet.payload
        dave_frame: bool | None = None
        call = self._server.calls.get(sender.channel_id)
        if call is None:
            return
        with_extension = self.extensions and header.sequence % 2 == 0
        out_header = RtpHeader(
            sequence=header.sequence,
            timestamp=header.timestamp,
            ssrc=header.ssrc,
            payload_type=header.payload_type,
            marker=header.marker,
            extension_profile=ONE_BYTE_EXTENSION_PROFILE if with_extension else None,
            extension_length=1 if with_extension else 0,
        ).serialize()
        plaintext = AUDIO_LEVEL_EXTENSION + payload if with_extension else payload
        on_relayed = self.on_relayed
        for recipient in list(call.members.values()):
            if (
                recipient is sender
                or not recipient.listens
                or recipient.cipher is None
                or recipient.udp_addr is None
            ):
                continue
            if not recipient.dave_capable:
                if dave_frame is None:
                    dave_frame = is_dave_frame(payload)
                if dave_frame:
                    self._counters["dave_frames_withheld"] += 1
                    continue
            recipient.out_nonce = (recipient.out_nonce + 1) & _U32
            self._send(recipient, recipient.cipher.seal(out_header, plaintext, recipient.out_nonce))
            if on_relayed is not None:
                on_relayed(recipient.user_id, header.ssrc, header.sequence)
            recipient.packets_out += 1
            self._counters["rtp_relayed"] += 1
            if self.rtcp_interval and recipient.packets_out % self.rtcp_interval == 0:
                self._receiver_report(recipient)

    def _receiver_report(self, recipient: Participant) -> None:
        """Send an encrypted RTCP RR (rtpsize: the 8-byte header is the AAD, §4.5).

        Its report block is about what the relay received *from* the recipient
        (its own SSRC), as an SFU's receiver report is.
        """
        assert recipient.cipher is not None
        header = struct.pack(">BBHI", 0x81, 201, 7, RELAY_SSRC)  # V=2 RC=1, RR, 8 words
        block = struct.pack(">IIIIII", recipient.ssrc, 0, recipient.last_sequence, 0, 0, 0)
        recipient.out_nonce = (recipient.out_nonce + 1) & _U32
        self._send(recipient, recipient.cipher.seal(header, block, recipient.out_nonce))
        self._counters["rtcp_sent"] += 1

    def _send(self, recipient: Participant, datagram: bytes) -> None:
        addr = recipient.udp_addr
        if addr is None:
            return
        for delay, data in self._injector.plan(datagram):
            if delay <= 0:
                self._sendto(data, addr)
            else:
                asyncio.get_running_loop().call_later(delay, self._sendto, data, addr)

    def _sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.sendto(data, addr)
