"""The client side of one voice-gateway session, without I/O.

:class:`VoiceSession` keeps what survives a resume: the credentials, the last
``seq`` seen (sent back as ``seq_ack``), the heartbeat bookkeeping and the
negotiated transport (SSRC, address, mode, key). The connection feeds it frames
and sends what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rxvoice.errors import UsageError
from rxvoice.protocol.gateway import (
    Envelope,
    GatewayMessage,
    Heartbeat,
    HeartbeatAck,
    Identify,
    Resume,
    parse,
)
from rxvoice.secret import Secret

__all__ = ["HeartbeatTracker", "VoiceServerInfo", "VoiceSession", "voice_url"]


def voice_url(endpoint: str, *, version: int = 8, secure: bool = True) -> str:
    """Build the voice WebSocket URL from a ``VOICE_SERVER_UPDATE`` endpoint.

    Discord sends ``host:port`` without a scheme; a leading ``wss://`` (or
    ``ws://``) is tolerated and replaced.

    Args:
        endpoint: The endpoint as Discord sends it.
        version: The voice gateway version (8 is the one rxvoice speaks).
        secure: ``wss`` (Discord, the sandbox) or plain ``ws``.

    Returns:
        For example ``wss://sweetwater-1.discord.media:2048/?v=8``.
    """
    host = endpoint.split("://", 1)[-1].rstrip("/")
    return f"{'wss' if secure else 'ws'}://{host}/?v={version}"


@dataclass(frozen=True, slots=True)
class VoiceServerInfo:
    """What the main gateway tells us about a voice session.

    Attributes:
        guild_id: The guild (``server_id`` in Identify).
        channel_id: The voice channel (also the DAVE MLS group id).
        user_id: Our (bot) user id.
        session_id: From ``VOICE_STATE_UPDATE``.
        token: From ``VOICE_SERVER_UPDATE``; a secret.
        endpoint: ``host:port`` from ``VOICE_SERVER_UPDATE``.
    """

    guild_id: str
    channel_id: str
    user_id: str
    session_id: str
    token: Secret[str] = field(repr=False)
    endpoint: str


class HeartbeatTracker:
    """Heartbeat nonces, round-trip times and missed ACKs.

    An ACK for any heartbeat still unanswered proves the connection alive (a
    late one included), and resets the count.

    Args:
        max_missed: How many heartbeats in a row may go unacknowledged before
            the connection counts as dead (discord.js uses 3).
    """

    __slots__ = ("_unanswered", "max_missed", "missed", "rtt")

    def __init__(self, max_missed: int = 3) -> None:
        self.max_missed = max_missed
        self.missed = 0
        self.rtt: float | None = None
        self._unanswered: dict[int, float] = {}  # nonce -> when it was sent

    @property
    def dead(self) -> bool:
        """Whether too many heartbeats went unacknowledged."""
        return self.missed >= self.max_missed

    def beat(self, now: float, seq_ack: int | None) -> Heartbeat:
        """Return the next heartbeat; counts the previous one as missed if unanswered.

        Args:
            now: Current time in seconds.
            seq_ack: The last ``seq`` received, or ``None`` when none was.
        """
        if self._unanswered:
            self.missed += 1
        nonce = int(now * 1000) & 0xFFFF_FFFF_FFFF
        while nonce in self._unanswered:
            nonce += 1
        self._unanswered[nonce] = now
        if len(self._unanswered) > self.max_missed + 1:
            del self._unanswered[next(iter(self._unanswered))]
        return Heartbeat(nonce=nonce, seq_ack=seq_ack)

    def ack(self, message: HeartbeatAck, now: float) -> float | None:
        """Record an ACK; return the round trip in seconds if it answers one of ours."""
        sent = self._unanswered.get(message.nonce)
        if sent is None:
            return None
        self._unanswered.clear()
        self.missed = 0
        self.rtt = now - sent
        return self.rtt

    def reset(self) -> None:
        """Forget pending heartbeats (a new WebSocket starts clean)."""
        self._unanswered.clear()
        self.missed = 0


class VoiceSession:
    """State of one voice session across WebSocket reconnects and resumes.

    Args:
        info: The credentials from the main gateway.
        max_dave_protocol_version: Sent in Identify; 0 disables DAVE.
        max_missed_heartbeats: See :class:`HeartbeatTracker`.
    """

    def __init__(
        self,
        info: VoiceServerInfo,
        *,
        max_dave_protocol_version: int,
        max_missed_heartbeats: int = 3,
    ) -> None:
        self.info = info
        self.max_dave_protocol_version = max_dave_protocol_version
        self.seq_ack: int | None = None
        self.heartbeats = HeartbeatTracker(max_missed_heartbeats)
        self.heartbeat_interval: float | None = None
        self.ssrc: int | None = None
        self.resumable = False

    def opening_message(self, *, resume: bool) -> GatewayMessage:
        """The first message on a new WebSocket: Resume if asked and possible, else Identify.

        Raises:
            UsageError: If ``resume`` is asked before the session was ever ready.
        """
        info = self.info
        self.heartbeats.reset()
        if resume:
            if not self.resumable:
                raise UsageError("this voice session cannot be resumed")
            return Resume(
                server_id=info.guild_id,
                session_id=info.session_id,
                token=info.token.reveal(),
                seq_ack=self.seq_ack if self.seq_ack is not None else -1,
            )
        self.seq_ack = None
        return Identify(
            server_id=info.guild_id,
            user_id=info.user_id,
            session_id=info.session_id,
            token=info.token.reveal(),
            max_dave_protocol_version=self.max_dave_protocol_version,
        )

    def receive(self, frame: str | bytes) -> Envelope:
        """Parse one frame from the server and remember its ``seq``.

        Raises:
            MalformedMessage: If the frame cannot be parsed.
        """
        envelope = parse(frame, from_server=True)
        if envelope.seq is not None:
            self.seq_ack = envelope.seq
        return envelope

    def heartbeat(self, now: float) -> Heartbeat:
        """The next heartbeat, carrying ``seq_ack`` (``-1`` before any ``seq``)."""
        return self.heartbeats.beat(now, self.seq_ack if self.seq_ack is not None else -1)
