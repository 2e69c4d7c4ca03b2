"""The one error tree of rxvoice.

Every exception the library raises on purpose derives from :class:`RxVoiceError`.
Errors are split, as in h11, between "the peer sent something wrong" and "the
caller used the API wrongly"::

    RxVoiceError
    ├── ProtocolError            the remote side (or the network) sent bad input
    │   ├── MalformedMessage     a voice-gateway JSON or binary frame is malformed
    │   ├── MalformedPacket      a UDP datagram (RTP, RTCP, IP discovery) is malformed
    │   ├── DecryptionError      transport AEAD authentication failed
    │   └── DaveError            a DAVE media frame or MLS message was refused
    ├── UsageError               the caller misused the API (wrong state, bad argument)
    │   ├── InvalidArgument      an argument's value is out of range or malformed
    │   │                        (also a ValueError)
    │   └── ReconnectInProgress  a reconnect was requested while one is running
    ├── ConnectionClosed         the voice connection ended for good
    │   ├── DaveRequired         closed with 4017: the channel requires DAVE
    │   └── GatewayClosed        the main gateway refused the bot (4004, 4010-4014)
    └── OpusUnavailable          libopus is not installed

Parsers raise only :class:`ProtocolError` subclasses on untrusted input; nothing
else escapes them. Messages never include secrets (tokens, keys).
"""

from __future__ import annotations

__all__ = [
    "ConnectionClosed",
    "DaveError",
    "DaveRequired",
    "DecryptionError",
    "GatewayClosed",
    "InvalidArgument",
    "MalformedMessage",
    "MalformedPacket",
    "OpusUnavailable",
    "ProtocolError",
    "ReconnectInProgress",
    "RxVoiceError",
    "UsageError",
]


class RxVoiceError(Exception):
    """Base class of every error rxvoice raises on purpose."""


class ProtocolError(RxVoiceError):
    """The remote side sent input that breaks the protocol."""


class MalformedMessage(ProtocolError):
    """A voice-gateway message (JSON text or binary frame) could not be parsed."""


class MalformedPacket(ProtocolError):
    """A UDP datagram (RTP, RTCP or IP discovery) could not be parsed."""


class DecryptionError(ProtocolError):
    """Transport decryption failed: wrong key, tampered or truncated packet."""


class DaveError(ProtocolError):
    """A DAVE media frame or MLS message could not be processed."""


class UsageError(RxVoiceError):
    """The caller used the API in a way it does not allow."""


class InvalidArgument(UsageError, ValueError):
    """An argument's value is out of range or malformed.

    Also a :class:`ValueError`, so code that caught the ``ValueError`` these
    checks raised before keeps working.
    """


class ReconnectInProgress(UsageError):
    """``reconnect()`` was called while another reconnect is running."""


class ConnectionClosed(RxVoiceError):
    """The voice connection was closed and will not reconnect by itself.

    Attributes:
        code: The WebSocket close code, or ``None`` when closed locally.
        reason: A human-readable explanation.
    """

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"voice connection closed ({code}): {reason}" if code else reason)
        self.code = code
        self.reason = reason


class DaveRequired(ConnectionClosed):
    """The voice server closed with 4017: the channel requires DAVE (E2EE).

    Since 2026-03-01 Discord accepts only end-to-end encrypted voice. rxvoice
    supports DAVE; this error means the connection identified without it (for
    example ``max_dave_protocol_version=0`` was configured).
    """


class GatewayClosed(ConnectionClosed):
    """The main gateway closed with a code after which reconnecting cannot help.

    4004 (authentication failed: a wrong or reset token), 4010 (invalid shard),
    4011 (sharding required), 4012 (invalid API version), 4013 (invalid
    intents), 4014 (disallowed intents: enable them in the Developer Portal).
    """

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(code, reason)
        self.args = (f"main gateway closed ({code}): {reason}",)


class OpusUnavailable(RxVoiceError):
    """libopus could not be loaded, so Opus frames cannot be decoded or encoded."""

    def __init__(self) -> None:
        super().__init__(
            "libopus is not installed: install it to decode or encode Opus "
            "(Debian/Ubuntu: apt-get install libopus0; Fedora: dnf install opus; "
            "macOS: brew install opus)"
        )
