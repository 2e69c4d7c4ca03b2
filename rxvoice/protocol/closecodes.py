"""Voice gateway close codes and what the client does after each one.

:func:`close_policy` maps a WebSocket close code to one of three reactions:

- ``RESUME``: open a new WebSocket and send op 7 Resume; the session survives.
- ``NEW_SESSION``: the session is gone; ask the main gateway again (op 4) for
  fresh credentials and send a fresh op 0 Identify.
- ``FINAL``: do not reconnect; the connection is over.

The table (protocol.md §1.7; sources: Discord's API docs, discord.js, discord.py):

====  =========================  ===========  ==============================================
code  name                       policy       why
====  =========================  ===========  ==============================================
None  (no close frame)           RESUME       the network dropped; nothing was decided
<4000 (1000, 1001, 1006, ...)    RESUME       transport-level close, as discord.js does
4001  UNKNOWN_OPCODE             FINAL        client bug: a retry sends the same opcode
4002  FAILED_TO_DECODE           FINAL        client bug: a retry sends the same payload
4003  NOT_AUTHENTICATED          NEW_SESSION  sent a payload before Identify
4004  AUTHENTICATION_FAILED      NEW_SESSION  the token is wrong or stale
4005  ALREADY_AUTHENTICATED      FINAL        client bug: Identify sent twice
4006  SESSION_NO_LONGER_VALID    NEW_SESSION  officially not resumable
4009  SESSION_TIMEOUT            NEW_SESSION  not resumable
4011  SERVER_NOT_FOUND           NEW_SESSION  the main gateway knows the current server
4012  UNKNOWN_PROTOCOL           FINAL        Select Protocol named a protocol the server lacks
4013  WEBRTC_CRASHED             RESUME       unofficial; the server asks for a resume
4014  DISCONNECTED               FINAL        kicked, moved or the main session dropped
4015  VOICE_SERVER_CRASHED       RESUME       officially: resume
4016  UNKNOWN_ENCRYPTION_MODE    FINAL        the same mode would be refused again
4017  DAVE_REQUIRED              FINAL        the channel requires DAVE (E2EE)
4020  BAD_REQUEST                FINAL        client bug: a retry repeats the request
4021  RATE_LIMITED               FINAL        officially: do not reconnect
4022  CALL_TERMINATED            FINAL        channel deleted, voice server changed, ...
other 4xxx and >= 5000           NEW_SESSION  unknown: start over, as discord.js rejoins
====  =========================  ===========  ==============================================
"""

from __future__ import annotations

import enum

from rxvoice.errors import ConnectionClosed, DaveRequired

__all__ = ["CloseCode", "ClosePolicy", "close_error", "close_policy", "describe_close"]


class CloseCode(enum.IntEnum):
    """Close codes the voice gateway sends (protocol.md §1.7)."""

    UNKNOWN_OPCODE = 4001
    FAILED_TO_DECODE = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    SESSION_NO_LONGER_VALID = 4006
    SESSION_TIMEOUT = 4009
    SERVER_NOT_FOUND = 4011
    UNKNOWN_PROTOCOL = 4012
    WEBRTC_CRASHED = 4013
    DISCONNECTED = 4014
    VOICE_SERVER_CRASHED = 4015
    UNKNOWN_ENCRYPTION_MODE = 4016
    DAVE_REQUIRED = 4017
    BAD_REQUEST = 4020
    RATE_LIMITED = 4021
    CALL_TERMINATED = 4022


class ClosePolicy(enum.Enum):
    """What to do after the voice WebSocket closed."""

    RESUME = "resume"
    """Reconnect and send op 7 Resume; the session and its state survive."""
    NEW_SESSION = "new_session"
    """Get fresh credentials from the main gateway and send a fresh Identify."""
    FINAL = "final"
    """Do not reconnect."""


_POLICY_TEXT = {
    ClosePolicy.RESUME: "resume the session (op 7 Resume on a new WebSocket)",
    ClosePolicy.NEW_SESSION: (
        "start a new session (fresh credentials from the main gateway, then a new Identify)"
    ),
    ClosePolicy.FINAL: "do not reconnect",
}

_TABLE: dict[int, tuple[str, ClosePolicy]] = {
    CloseCode.UNKNOWN_OPCODE: (
        "The client sent an unknown opcode (a client bug).",
        ClosePolicy.FINAL,
    ),
    CloseCode.FAILED_TO_DECODE: (
        "The server could not decode a payload the client sent (a client bug).",
        ClosePolicy.FINAL,
    ),
    CloseCode.NOT_AUTHENTICATED: (
        "The client sent a payload before identifying.",
        ClosePolicy.NEW_SESSION,
    ),
    CloseCode.AUTHENTICATION_FAILED: (
        "Authentication failed: the token in Identify or Resume is wrong or stale.",
        ClosePolicy.NEW_SESSION,
    ),
    CloseCode.ALREADY_AUTHENTICATED: (
        "The client identified twice (a client bug).",
        ClosePolicy.FINAL,
    ),
    CloseCode.SESSION_NO_LONGER_VALID: (
        "The voice session is no longer valid and cannot be resumed.",
        ClosePolicy.NEW_SESSION,
    ),
    CloseCode.SESSION_TIMEOUT: (
        "The voice session timed out and cannot be resumed.",
        ClosePolicy.NEW_SESSION,
    ),
    CloseCode.SERVER_NOT_FOUND: (
        "The voice server was not found.",
        ClosePolicy.NEW_SESSION,
    ),
    CloseCode.UNKNOWN_PROTOCOL: (
        "The server does not know the protocol named in Select Protocol (a client bug).",
        ClosePolicy.FINAL,
    ),
    CloseCode.WEBRTC_CRASHED: (
        "The voice server's WebRTC layer crashed (unofficial code); the session survives.",
        ClosePolicy.RESUME,
    ),
    CloseCode.DISCONNECTED: (
        "Disconnected from voice: kicked, moved to another channel, or the main "
        "gateway session ended.",
        ClosePolicy.FINAL,
    ),
    CloseCode.VOICE_SERVER_CRASHED: (
        "The voice server crashed; the session survives.",
        ClosePolicy.RESUME,
    ),
    CloseCode.UNKNOWN_ENCRYPTION_MODE: (
        "The server does not accept the encryption mode chosen in Select Protocol.",
        ClosePolicy.FINAL,
    ),
    CloseCode.DAVE_REQUIRED: (
        "The channel requires DAVE (end-to-end encryption): the client must identify "
        "with max_dave_protocol_version >= 1.",
        ClosePolicy.FINAL,
    ),
    CloseCode.BAD_REQUEST: (
        "The server rejected a malformed request (a client bug).",
        ClosePolicy.FINAL,
    ),
    CloseCode.RATE_LIMITED: (
        "Disconnected from voice: rate limited.",
        ClosePolicy.FINAL,
    ),
    CloseCode.CALL_TERMINATED: (
        "Disconnected from voice: the call was terminated (channel deleted, voice "
        "server changed, ...).",
        ClosePolicy.FINAL,
    ),
}

# RFC 6455 names for the transport-level codes worth naming in a message.
_WEBSOCKET_NAMES = {
    1000: "normal closure",
    1001: "going away",
    1002: "protocol error",
    1003: "unsupported data",
    1006: "abnormal closure",
    1007: "invalid payload data",
    1008: "policy violation",
    1009: "message too big",
    1011: "internal server error",
    1012: "service restart",
    1013: "try again later",
}


def close_policy(code: int | None) -> ClosePolicy:
    """Return what to do after the voice WebSocket closed with ``code``.

    Args:
        code: The close code, or ``None`` when the connection dropped without a
            close frame.

    Returns:
        ``RESUME`` for ``None``, every code below 4000, 4013 and 4015; the
        table's policy for the other known codes; ``NEW_SESSION`` for any
        other code.
    """
    if code is None or code < 4000:
        return ClosePolicy.RESUME
    entry = _TABLE.get(code)
    return ClosePolicy.NEW_SESSION if entry is None else entry[1]


def describe_close(code: int | None) -> str:
    """Return a sentence saying why the connection closed and what happens next.

    Args:
        code: The close code, or ``None`` when the connection dropped without a
            close frame.

    Returns:
        For example ``"4015 VOICE_SERVER_CRASHED: The voice server crashed; the
        session survives. Next: resume the session (op 7 Resume on a new
        WebSocket)."``
    """
    policy = close_policy(code)
    if code is None:
        text = "The connection dropped without a close frame (network loss)."
    elif code < 4000:
        name = _WEBSOCKET_NAMES.get(code)
        text = f"{code}{f' ({name})' if name else ''}: a transport-level close."
    elif code in _TABLE:
        text = f"{code} {CloseCode(code).name}: {_TABLE[code][0]}"
    else:
        text = f"{code}: a close code this library does not know."
    return f"{text} Next: {_POLICY_TEXT[policy]}."


def close_error(code: int | None, reason: str | None = None) -> ConnectionClosed:
    """Return the exception that reports a close the connection will not recover from.

    Args:
        code: The close code, or ``None``.
        reason: The reason to report; :func:`describe_close`'s sentence by default.

    Returns:
        :class:`~rxvoice.errors.DaveRequired` for 4017, otherwise
        :class:`~rxvoice.errors.ConnectionClosed`.
    """
    if reason is None:
        reason = describe_close(code)
    if code == CloseCode.DAVE_REQUIRED:
        return DaveRequired(code, reason)
    return ConnectionClosed(code, reason)
