"""The sandbox's voice gateway (v8): sessions, roster, seq and resume, and DAVE wiring.

It follows protocol.md §7.2 (the server's duties) and §11 (what real clients
expect), not what rxvoice's client happens to do:

- **Handshake.** op 8 Hello on connect; op 0 Identify checked against the
  minted voice tokens (the sandbox's universal token fits any user and
  session); op 2 Ready (unique SSRC, UDP address, configurable modes); op 1
  Select Protocol (4016 on an unknown mode); op 4 Session Description (a random
  32-byte key and the call's DAVE version).
- **Errors.** 4003 before Identify, 4005 on a second Identify, 4004 on a bad
  token, 4001 on an unknown opcode, 4002 on an undecodable frame, 4009 when
  heartbeats stop, 4017 for a non-DAVE client when DAVE is required.
- **Seq and resume.** One counter per session numbers every server message
  except op 6, op 8 and op 9 (JSON ``seq`` from 1; binary frames carry it as
  u16); a replay buffer is trimmed by ``seq_ack``; op 7 gets op 9 and the
  replay of everything above ``seq_ack``; the SSRC, key and UDP address
  survive. A session whose WebSocket dropped stays in the call for
  ``resume_window`` seconds.
- **Roster.** op 11 to a joiner listing the others and to the others about the
  joiner (after op 2), each user followed by the unofficial op 18 (flags) and
  op 20 (platform) as Discord sends them, op 13 when a session ends, op 5
  relayed as ``{speaking, ssrc, user_id}`` and replayed to joiners.
- **DAVE.** Each call (voice channel) has a
  :class:`~rxvoice.testing.sandbox.dave.DaveDeliveryService`; the server feeds
  it joins (after op 4, so op 25 follows op 4), leaves and the client's DAVE
  ops, and sends what it returns. One timer per call fires at its next
  transition deadline (op 22 after a timeout).

The logic is synchronous: a frame in, state updated, frames queued on
:class:`~rxvoice.testing.sandbox.links.Link` objects. Time comes from a
:class:`Scheduler` passed in (the event loop in the sandbox, a hand-stepped
clock in tests): heartbeat deadlines (4009), resume windows, delayed op 5 and
DAVE transition timeouts are timers on it. Malformed client input is counted
and logged and never raises out of :meth:`VoiceServer.receive`.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from rxvoice.errors import MalformedMessage
from rxvoice.protocol import gateway as gw
from rxvoice.protocol.closecodes import CloseCode
from rxvoice.protocol.crypto import EncryptionMode, TransportCipher
from rxvoice.testing.sandbox.dave import DaveDeliveryService
from rxvoice.testing.sandbox.faults import FaultInjector
from rxvoice.testing.sandbox.links import Link, WebSocketLink
from rxvoice.testing.sandbox.options import SandboxOptions

__all__ = [
    "Participant",
    "ParticipantInfo",
    "Scheduler",
    "Timer",
    "VoiceConnection",
    "VoiceServer",
    "new_snowflake",
    "resumable",
]

logger = logging.getLogger(__name__)

_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF

#: Opcodes some clients send that the sandbox accepts and ignores (video, media sink wants).
_IGNORED_CLIENT_OPS = frozenset({12, 15})

#: Opcodes a client may send (plus the ignored ones); anything else gets 4001.
_CLIENT_OPS = _IGNORED_CLIENT_OPS | {
    gw.Opcode.IDENTIFY,
    gw.Opcode.SELECT_PROTOCOL,
    gw.Opcode.HEARTBEAT,
    gw.Opcode.SPEAKING,
    gw.Opcode.RESUME,
    gw.Opcode.DAVE_TRANSITION_READY,
    gw.Opcode.DAVE_MLS_KEY_PACKAGE,
    gw.Opcode.DAVE_MLS_COMMIT_WELCOME,
    gw.Opcode.DAVE_MLS_INVALID_COMMIT_WELCOME,
}

#: Close codes after which the session survives and may be resumed (plus all codes < 4000).
_RESUMABLE_CODES = frozenset({CloseCode.WEBRTC_CRASHED, CloseCode.VOICE_SERVER_CRASHED})


class Timer(Protocol):
    """A pending call (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None:
        """Do not make the call."""
        ...


class Scheduler(Protocol):
    """Where the voice server's time comes from; an ``asyncio`` event loop is one."""

    def time(self) -> float:
        """Now, in seconds."""
        ...

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        """Call ``callback()`` once :meth:`time` reaches ``when``."""
        ...


def new_snowflake() -> str:
    """A random id shaped like a Discord snowflake (a u64 in decimal, 19 digits)."""
    return str((1 << 62) | secrets.randbits(60))


def resumable(code: int | None) -> bool:
    """Whether a close with ``code`` leaves the session resumable (§1.7)."""
    return code is None or code < 4000 or code in _RESUMABLE_CODES


@dataclass(frozen=True, slots=True)
class ParticipantInfo:
    """A snapshot of one user in a call, for inspection by tests and tools.

    Attributes:
        user_id: The user.
        channel_id: The call (voice channel) the user is in.
        ssrc: The SSRC from Ready.
        mode: The transport mode chosen in op 1, once chosen.
        max_dave_protocol_version: What the user's Identify offered.
        connected: Whether a WebSocket (or in-memory link) is attached now.
        speaking: The last op 5 flags.
        simulated: Whether this is one of the sandbox's simulated speakers.
        listens: Whether the relay sends this user the others' media (clients
            always; simulated speakers only when they listen).
        udp_address: Where the relay sends this user's media.
        packets_in: RTP packets accepted from this user.
        packets_out: RTP packets relayed to this user.
        seq: The last ``seq`` sent to this user.
        seq_acked: The highest ``seq`` the user acknowledged (heartbeat or
            resume ``seq_ack``); 0 before any.
    """

    user_id: str
    channel_id: str
    ssrc: int
    mode: str | None
    max_dave_protocol_version: int
    connected: bool
    speaking: int
    simulated: bool
    listens: bool
    udp_address: tuple[str, int] | None
    packets_in: int
    packets_out: int
    seq: int
    seq_acked: int


@dataclass(frozen=True, slots=True)
class _Grant:
    """A voice token minted by the sandbox; ``None`` fields match anything."""

    channel_id: str
    user_id: str | None
    session_id: str | None


@dataclass(eq=False, slots=True)
class Participant:
    """One user's voice session in a call (server side); survives resumes.

    Only the sandbox's own modules touch this; tests use :class:`ParticipantInfo`.
    """

    user_id: str
    session_id: str
    channel_id: str
    token: str = field(repr=False)
    ssrc: int
    max_dave: int
    simulated: bool = False
    listens: bool = True  # the relay sends this user media
    mode: EncryptionMode | None = None
    key: bytes = field(default=b"", repr=False)
    cipher: TransportCipher | None = field(default=None, repr=False)
    udp_addr: tuple[str, int] | None = None
    speaking: int = 0
    announced: bool = False
    dave_joined: bool = False
    conn: VoiceConnection | None = field(default=None, repr=False)
    seq: int = 0
    seq_acked: int = 0
    floor: int = 0
    buffer: collections.deque[tuple[int, str | bytes]] = field(
        default_factory=collections.deque, repr=False
    )
    out_nonce: int = 0
    packets_in: int = 0
    last_sequence: int = 0  # highest RTP sequence received from this user
    packets_out: int = 0
    expiry: Timer | None = field(default=None, repr=False)

    @property
    def dave_capable(self) -> bool:
        """Whether the user identified with DAVE support."""
        return self.max_dave >= 1

    def info(self) -> ParticipantInfo:
        """Return a snapshot."""
        return ParticipantInfo(
            user_id=self.user_id,
            channel_id=self.channel_id,
            ssrc=self.ssrc,
            mode=None if self.mode is None else self.mode.value,
            max_dave_protocol_version=self.max_dave,
            connected=self.conn is not None,
            speaking=self.speaking,
            simulated=self.simulated,
            listens=self.listens,
            udp_address=self.udp_addr,
            packets_in=self.packets_in,
            packets_out=self.packets_out,
            seq=self.seq,
            seq_acked=self.seq_acked,
        )


@dataclass(eq=False, slots=True)
class VoiceConnection:
    """One WebSocket (or in-memory link) to the voice gateway."""

    link: Link
    listens: bool = True
    session: Participant | None = None
    closing: bool = False
    heartbeat_timer: Timer | None = None


@dataclass(eq=False, slots=True)
class _Call:
    """A voice channel's call: its members, its DAVE delivery service and its timer."""

    channel_id: str
    members: dict[str, Participant] = field(default_factory=dict)
    dave: DaveDeliveryService | None = None
    dave_deadline: float | None = None  # when dave_timer fires
    dave_timer: Timer | None = None


def _opcode_of(frame: str | bytes) -> int | None:
    """Best-effort opcode of a frame that failed to parse (``None`` if unreadable)."""
    if isinstance(frame, bytes | bytearray):
        return frame[0] if frame else None
    try:
        op = json.loads(frame).get("op")
    except (ValueError, AttributeError, RecursionError):
        return None
    return op if isinstance(op, int) else None


def _unwrap_ack(ack: int | None, last: int) -> int:
    """Map a client's ``seq_ack`` onto the full counter.

    Binary frames carry the seq modulo 2^16, so a client whose last frame was
    binary acknowledges a wrapped value; take the latest full seq that matches.
    """
    if ack is None or ack < 0:
        return 0
    if ack > _U16 or last <= _U16:
        return min(ack, last)
    return last - ((last - ack) & _U16)


class VoiceServer:
    """The voice gateway's state and logic, independent of sockets.

    Args:
        options: The sandbox's options (modes, heartbeat interval, DAVE,
            resume window and buffer, transition timeout).
        guild_id: The guild (``server_id`` in Identify).
        default_channel_id: The call that the universal token joins.
        media_ip: The IP address sent in Ready.
        clock: Time and timers (the running event loop in the sandbox).
        injector: Fault knobs (dropped heartbeat ACKs, late op 5).
        counters: Shared event counters.
        on_change: Called after every state change (join, leave, op, ...).
        on_voice_state: Called with ``(participant, joined)`` when a user
            joins or leaves a call.
    """

    def __init__(
        self,
        options: SandboxOptions,
        *,
        guild_id: str,
        default_channel_id: str,
        media_ip: str,
        clock: Scheduler,
        injector: FaultInjector,
        counters: collections.Counter[str],
        on_change: Callable[[], None],
        on_voice_state: Callable[[Participant, bool], None],
    ) -> None:
        self.options = options
        self.guild_id = guild_id
        self.default_channel_id = default_channel_id
        self.media_ip = media_ip
        self.media_port = 0  # set by the sandbox once the relay is bound
        # Discord sends whole milliseconds: an integral interval goes out as an int.
        interval = options.heartbeat_interval
        self.heartbeat_interval = int(interval) if float(interval).is_integer() else interval
        self.clock = clock
        self.injector = injector
        self.counters = counters
        self._on_change = on_change
        self._on_voice_state = on_voice_state
        self.universal_token = secrets.token_urlsafe(24)
        self._grants: dict[str, _Grant] = {}
        self.calls: dict[str, _Call] = {}
        self.by_ssrc: dict[int, Participant] = {}
        self._by_session: dict[str, Participant] = {}
        self._by_user: dict[str, Participant] = {}
        self._conns: set[VoiceConnection] = set()
        self._stopped = False

    def __repr__(self) -> str:
        return f"VoiceServer(guild_id={self.guild_id!r}, calls={len(self.calls)})"

    # -- credentials ------------------------------------------------------------------------

    def mint(self, user_id: str, channel_id: str, session_id: str | None = None) -> tuple[str, str]:
        """Create a voice token for one user and session in a call.

        Returns:
            ``(session_id, token)``.
        """
        session_id = session_id or secrets.token_hex(16)
        token = secrets.token_hex(16)
        self._grants[token] = _Grant(channel_id, user_id, session_id)
        return session_id, token

    def revoke_tokens(self, user_id: str) -> None:
        """Invalidate every token minted for ``user_id``."""
        for token in [t for t, g in self._grants.items() if g.user_id == user_id]:
            del self._grants[token]

    def _grant(self, token: str) -> _Grant | None:
        if token == self.universal_token:
            return _Grant(self.default_channel_id, None, None)
        return self._grants.get(token)

    # -- inspection -------------------------------------------------------------------------

    def participant(self, user_id: str) -> Participant | None:
        """The live session of ``user_id``, if any."""
        return self._by_user.get(user_id)

    def call(self, channel_id: str) -> _Call:
        """The call for ``channel_id`` (created empty on first use)."""
        call = self.calls.get(channel_id)
        if call is None:
            call = self.calls[channel_id] = _Call(channel_id)
        return call

    def _count(self, name: str) -> None:
        self.counters[name] += 1

    # -- connections ------------------------------------------------------------------------

    def open(self, link: Link, *, listens: bool = True) -> VoiceConnection:
        """Register a new connection and greet it with op 8 Hello.

        Args:
            link: Where to send its frames.
            listens: Whether the session it identifies gets the others' media
                from the relay (a simulated speaker may not want it).
        """
        conn = VoiceConnection(link, listens)
        self._conns.add(conn)
        self._count("voice_connections")
        link.send(gw.serialize(gw.Hello(heartbeat_interval=self.heartbeat_interval, version=8)))
        self._arm_heartbeat(conn)
        return conn

    def closed(self, conn: VoiceConnection, code: int | None) -> None:
        """The connection ended (either side). Detaches its session for a resume.

        Args:
            conn: The connection.
            code: The close code seen, or ``None`` without a close frame.
        """
        self._conns.discard(conn)
        if conn.heartbeat_timer is not None:
            conn.heartbeat_timer.cancel()
            conn.heartbeat_timer = None
        if not conn.closing:  # the client ended it (closed_* counts the sandbox's closes)
            self._count(f"client_closed_{code}")
        conn.closing = True
        p = conn.session
        if p is None or p.conn is not conn:
            return
        p.conn = None
        logger.info("voice session of %s detached (code %s)", p.user_id, code)
        self._detach(p)
        self._on_change()

    def shutdown(self) -> None:
        """Cancel every timer (heartbeat deadlines, resume windows); the sandbox is stopping."""
        for conn in self._conns:
            if conn.heartbeat_timer is not None:
                conn.heartbeat_timer.cancel()
        self._conns.clear()
        for p in self._by_user.values():
            if p.expiry is not None:
                p.expiry.cancel()
                p.expiry = None
        for call in self.calls.values():
            if call.dave_timer is not None:
                call.dave_timer.cancel()
                call.dave_timer = call.dave_deadline = None
        self._stopped = True

    def _detach(self, p: Participant) -> None:
        if self._stopped:
            return
        if p.expiry is not None:
            p.expiry.cancel()
        p.expiry = self._call_later(self.options.resume_window, functools.partial(self._expire, p))

    def _expire(self, p: Participant) -> None:
        p.expiry = None
        if p.conn is None and self._by_user.get(p.user_id) is p:
            logger.info("voice session of %s expired without a resume", p.user_id)
            self._count("sessions_expired")
            self.end_session(p)

    def _close(self, conn: VoiceConnection, code: int | None, reason: str) -> None:
        """Close a connection; a non-resumable code also ends its session."""
        if conn.closing:
            return
        conn.closing = True
        if code is not None and code >= 4000:
            self._count(f"closed_{code}")
        logger.info("closing voice connection: %s %s", code, reason)
        p = conn.session
        conn.link.close(code, reason)
        if p is not None and p.conn is conn:
            if resumable(code):
                p.conn = None
                self._detach(p)
            else:
                self.end_session(p)
        self._on_change()

    def force_close(self, user_id: str, code: int | None, reason: str = "") -> bool:
        """Close ``user_id``'s connection with ``code`` (``None``: drop TCP abruptly).

        A resumable code (below 4000, 4013, 4015, or ``None``) keeps the session
        for a resume; any other code ends it.

        Returns:
            Whether the user had a connection.
        """
        p = self._by_user.get(user_id)
        if p is None:
            return False
        if p.conn is None:
            if not resumable(code):
                self.end_session(p)
            return False
        self._close(p.conn, code, reason or "closed by the sandbox")
        return True

    def send_raw(self, user_id: str, frame: str | bytes) -> bool:
        """Send ``frame`` as is to ``user_id``'s connection (no seq, no checks).

        Returns:
            Whether the user had a connection.
        """
        p = self._by_user.get(user_id)
        if p is None or p.conn is None or p.conn.closing:
            return False
        self._count("raw_frames_sent")
        p.conn.link.send(frame)
        return True

    # -- sending ----------------------------------------------------------------------------

    def send(self, p: Participant, message: gw.GatewayMessage) -> None:
        """Send a numbered message to ``p`` (buffered for resume)."""
        p.seq += 1
        seq = p.seq
        frame = gw.serialize(message, seq=seq & _U16 if gw.is_binary(message) else seq)
        p.buffer.append((seq, frame))
        if len(p.buffer) > self.options.replay_limit:
            p.floor = p.buffer.popleft()[0]
        if p.conn is not None and not p.conn.closing:
            p.conn.link.send(frame)

    def _send_unnumbered(self, conn: VoiceConnection, message: gw.GatewayMessage) -> None:
        if not conn.closing:
            conn.link.send(gw.serialize(message))

    def _broadcast(self, call: _Call, message: gw.GatewayMessage, *, skip: Participant) -> None:
        for other in list(call.members.values()):
            if other is not skip:
                self.send(other, message)

    def _ack(self, p: Participant, seq_ack: int | None) -> int:
        full = _unwrap_ack(seq_ack, p.seq)
        p.seq_acked = max(p.seq_acked, full)
        while p.buffer and p.buffer[0][0] <= full:
            p.floor = p.buffer.popleft()[0]
        return full

    # -- receiving --------------------------------------------------------------------------

    def receive(self, conn: VoiceConnection, frame: str | bytes) -> None:
        """Handle one frame from a client. Never raises."""
        if conn.closing:
            return
        try:
            envelope = gw.parse(frame, from_server=False)
        except MalformedMessage as exc:
            op = _opcode_of(frame)
            if op is not None and op not in _CLIENT_OPS:
                # A server-only or unknown op: that is the error, whatever its body.
                self._count("unknown_ops")
                self._close(conn, CloseCode.UNKNOWN_OPCODE, "Unknown opcode")
                return
            self._count("malformed_frames")
            logger.warning("undecodable frame from a voice client: %s", exc)
            self._close(conn, CloseCode.FAILED_TO_DECODE, "Failed to decode payload")
            return
        try:
            self._dispatch(conn, envelope.message)
        except Exception:
            self._count("handler_errors")
            logger.exception("voice gateway failed on op %s", envelope.message.op)
        self._on_change()

    def _dispatch(self, conn: VoiceConnection, m: gw.GatewayMessage) -> None:
        if isinstance(m, gw.Heartbeat):
            self._heartbeat(conn, m)
            return
        p = conn.session
        if isinstance(m, gw.Identify | gw.Resume):
            if p is not None:
                self._close(conn, CloseCode.ALREADY_AUTHENTICATED, "Already authenticated")
            elif isinstance(m, gw.Identify):
                self._identify(conn, m)
            else:
                self._resume(conn, m)
            return
        if p is None:
            self._count("not_authenticated")
            self._close(conn, CloseCode.NOT_AUTHENTICATED, "Not authenticated")
            return
        if isinstance(m, gw.SelectProtocol):
            self._select_protocol(conn, p, m)
        elif isinstance(m, gw.Speaking):
            self._speaking(p, m)
        elif isinstance(
            m,
            gw.DaveTransitionReady
            | gw.DaveMlsKeyPackage
            | gw.DaveMlsCommitWelcome
            | gw.DaveMlsInvalidCommitWelcome,
        ):
            self._dave_message(p, m)
        elif isinstance(m, gw.UnknownMessage) and m.op in _IGNORED_CLIENT_OPS:
            self._count("ignored_ops")
        else:
            self._count("unknown_ops")
            self._close(conn, CloseCode.UNKNOWN_OPCODE, "Unknown opcode")

    def _heartbeat(self, conn: VoiceConnection, m: gw.Heartbeat) -> None:
        self._arm_heartbeat(conn)
        if conn.session is not None:
            self._ack(conn.session, m.seq_ack)
        if self.injector.drop_heartbeat_ack():
            return
        self._send_unnumbered(conn, gw.HeartbeatAck(nonce=m.nonce))

    def _arm_heartbeat(self, conn: VoiceConnection) -> None:
        if conn.heartbeat_timer is not None:
            conn.heartbeat_timer.cancel()
            conn.heartbeat_timer = None
        if not conn.link.in_process:
            # Two missed intervals, as clients send one per interval.
            timeout = 2 * self.heartbeat_interval / 1000
            conn.heartbeat_timer = self._call_later(
                timeout, functools.partial(self._heartbeat_timeout, conn)
            )

    def _heartbeat_timeout(self, conn: VoiceConnection) -> None:
        conn.heartbeat_timer = None
        self._count("heartbeat_timeouts")
        self._close(conn, CloseCode.SESSION_TIMEOUT, "Session timeout")

    # -- identify and resume ----------------------------------------------------------------

    def _identify(self, conn: VoiceConnection, m: gw.Identify) -> None:
        grant = self._grant(m.token)
        if (
            grant is None
            or m.server_id != self.guild_id
            or grant.user_id not in (None, m.user_id)
            or grant.session_id not in (None, m.session_id)
        ):
            self._count("auth_failures")
            self._close(conn, CloseCode.AUTHENTICATION_FAILED, "Authentication failed")
            return
        holder = self._by_session.get(m.session_id)
        if holder is not None and holder.user_id != m.user_id:
            # Resume finds sessions by id alone: one id must not serve two users.
            self._count("auth_failures")
            self._close(conn, CloseCode.AUTHENTICATION_FAILED, "Session id in use")
            return
        if self.options.require_dave and m.max_dave_protocol_version < 1:
            self._close(conn, CloseCode.DAVE_REQUIRED, "E2EE/DAVE protocol required")
            return
        old = self._by_user.get(m.user_id)
        if old is not None:
            logger.info("user %s identified again; the old session ends", m.user_id)
            if old.conn is not None:
                self._close(old.conn, CloseCode.SESSION_NO_LONGER_VALID, "Session replaced")
            if self._by_user.get(m.user_id) is old:
                self.end_session(old)
        p = Participant(
            user_id=m.user_id,
            session_id=m.session_id,
            channel_id=grant.channel_id,
            token=m.token,
            ssrc=self._new_ssrc(),
            max_dave=m.max_dave_protocol_version if self.options.dave else 0,
            simulated=conn.link.in_process,
            listens=conn.listens,
        )
        conn.session = p
        p.conn = conn
        call = self.call(p.channel_id)
        self.by_ssrc[p.ssrc] = p
        self._by_session[p.session_id] = p
        self._by_user[p.user_id] = p
        others = list(call.members.values())
        call.members[p.user_id] = p
        self._count("identified")
        logger.info("user %s joined call %s (ssrc %d)", p.user_id, p.channel_id, p.ssrc)
        self.send(
            p,
            gw.Ready(
                ssrc=p.ssrc,
                ip=self.media_ip,
                port=self.media_port,
                modes=self.options.modes,
                heartbeat_interval=self.heartbeat_interval,
            ),
        )
        # Roster after Ready (§11.4): the joiner learns the others, the others the joiner,
        # each followed by the unofficial op 18 / op 20 that Discord sends per user.
        if others:
            self.send(p, gw.ClientsConnect(user_ids=tuple(o.user_id for o in others)))
            for other in others:
                self._send_client_info(p, other)
        for other in others:
            self.send(other, gw.ClientsConnect(user_ids=(p.user_id,)))
            self._send_client_info(other, p)
        for other in others:
            if other.speaking:
                self.send(
                    p, gw.Speaking(speaking=other.speaking, ssrc=other.ssrc, user_id=other.user_id)
                )
        self._on_voice_state(p, True)

    def _send_client_info(self, to: Participant, about: Participant) -> None:
        self.send(to, gw.ClientFlags(user_id=about.user_id, flags=0))
        self.send(to, gw.ClientPlatform(user_id=about.user_id, platform=0))

    def _new_ssrc(self) -> int:
        while True:
            ssrc = secrets.randbelow(_U32) + 1
            if ssrc not in self.by_ssrc:
                return ssrc

    def _resume(self, conn: VoiceConnection, m: gw.Resume) -> None:
        p = self._by_session.get(m.session_id)
        if p is None:
            self._close(conn, CloseCode.SESSION_NO_LONGER_VALID, "Session no longer valid")
            return
        if m.server_id != self.guild_id or m.token not in (p.token, self.universal_token):
            self._count("auth_failures")
            self._close(conn, CloseCode.AUTHENTICATION_FAILED, "Authentication failed")
            return
        full = _unwrap_ack(m.seq_ack, p.seq)
        if full < p.floor:
            # The messages the client missed are gone: the session cannot continue.
            self._count("resume_gaps")
            code = self.options.resume_gap_code
            self._close(conn, code, "Resume buffer exhausted")
            self.end_session(p, code, "Resume buffer exhausted")
            return
        if p.conn is not None:
            old, p.conn = p.conn, None
            old.session = None
            self._close(old, 1000, "superseded by a resume")
        if p.expiry is not None:
            p.expiry.cancel()
            p.expiry = None
        conn.session = p
        p.conn = conn
        self._ack(p, m.seq_ack)
        self._count("resumed")
        logger.info("user %s resumed (replaying %d messages)", p.user_id, len(p.buffer))
        self._send_unnumbered(conn, gw.Resumed())
        for _, frame in p.buffer:
            conn.link.send(frame)

    # -- media setup and speaking -----------------------------------------------------------

    def _select_protocol(self, conn: VoiceConnection, p: Participant, m: gw.SelectProtocol) -> None:
        if m.protocol != "udp":
            self._close(conn, CloseCode.UNKNOWN_PROTOCOL, "Unknown protocol")
            return
        if m.mode not in self.options.modes:
            self._count("bad_modes")
            self._close(conn, CloseCode.UNKNOWN_ENCRYPTION_MODE, "Unknown encryption mode")
            return
        if not p.key:
            p.key = secrets.token_bytes(32)
        p.mode = EncryptionMode(m.mode)
        p.cipher = TransportCipher(p.mode, p.key)
        if p.udp_addr is None:
            p.udp_addr = (m.address, m.port)
        call = self.call(p.channel_id)
        service = self._dave_service(call)
        out: list[tuple[str, gw.GatewayMessage]] = []
        if not p.dave_joined and service is not None:
            # Joined before op 4 so that op 4 carries the call's version; what join
            # returns (op 25, or op 21 for a downgrade) goes after op 4 (§11.5).
            p.dave_joined = True
            out = service.join(p.user_id, dave_capable=p.dave_capable, now=self._now())
        version = service.session_description_version(p.user_id) if service is not None else 0
        self.send(
            p,
            gw.SessionDescription(
                mode=p.mode.value, secret_key=p.key, dave_protocol_version=version
            ),
        )
        self._route(call, out)

    def _speaking(self, p: Participant, m: gw.Speaking) -> None:
        p.speaking = m.speaking
        p.announced = True
        call = self.call(p.channel_id)
        relay = gw.Speaking(speaking=m.speaking, ssrc=p.ssrc, user_id=p.user_id)
        delay = self.injector.faults.speaking_delay
        if delay:
            self.injector.counters["delayed_speaking"] = (
                self.injector.counters.get("delayed_speaking", 0) + 1
            )
            self._call_later(delay, functools.partial(self._late_broadcast, call, relay, p))
        else:
            self._broadcast(call, relay, skip=p)

    def _late_broadcast(self, call: _Call, message: gw.GatewayMessage, sender: Participant) -> None:
        if not self._stopped:
            self._broadcast(call, message, skip=sender)

    # -- leaving ----------------------------------------------------------------------------

    def end_session(self, p: Participant, code: int | None = None, reason: str = "") -> None:
        """End ``p``'s session: it leaves the call (op 13 to the others, DAVE remove).

        Args:
            p: The session.
            code: Close code for a connection still attached (4006 when omitted).
            reason: The close reason.
        """
        if self._by_user.get(p.user_id) is not p:
            return
        del self._by_user[p.user_id]
        # Session ids come from clients (any id goes with the universal token): only drop ours.
        if self._by_session.get(p.session_id) is p:
            del self._by_session[p.session_id]
        del self.by_ssrc[p.ssrc]
        if p.expiry is not None:
            p.expiry.cancel()
            p.expiry = None
        conn, p.conn = p.conn, None
        if conn is not None and not conn.closing:
            conn.closing = True
            if code is None:
                code, reason = CloseCode.SESSION_NO_LONGER_VALID, reason or "Session ended"
            conn.link.close(code, reason)
        call = self.call(p.channel_id)
        call.members.pop(p.user_id, None)
        self._count("left")
        logger.info("user %s left call %s", p.user_id, p.channel_id)
        for other in list(call.members.values()):
            self.send(other, gw.ClientDisconnect(user_id=p.user_id))
        if p.dave_joined and call.dave is not None:
            self._route(call, call.dave.leave(p.user_id, self._now()))
        self._on_voice_state(p, False)
        self._on_change()

    def leave(self, user_id: str, code: int | None = CloseCode.DISCONNECTED) -> bool:
        """End ``user_id``'s session (as a main-gateway leave or a kick does).

        Args:
            user_id: The user.
            code: Close code for an attached connection (4014 by default).

        Returns:
            Whether the user was in a call.
        """
        p = self._by_user.get(user_id)
        if p is None:
            return False
        self.end_session(p, code, "Disconnected")
        return True

    # -- DAVE -------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.clock.time()

    def _call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        return self.clock.call_at(self.clock.time() + delay, callback)

    def _dave_service(self, call: _Call) -> DaveDeliveryService | None:
        if not self.options.dave:
            return None
        if call.dave is None:
            call.dave = DaveDeliveryService(
                int(call.channel_id),
                require_dave=self.options.require_dave,
                transition_timeout=self.options.transition_timeout,
            )
        return call.dave

    def _dave_message(self, p: Participant, m: gw.GatewayMessage) -> None:
        call = self.call(p.channel_id)
        service = call.dave if p.dave_joined else None
        if service is None:
            # A DAVE op before op 1, or DAVE is off: nothing to feed it to.
            self._count("dave_ops_ignored")
            return
        now = self._now()
        if isinstance(m, gw.DaveMlsKeyPackage):
            out = service.key_package(p.user_id, m.key_package, now)
        elif isinstance(m, gw.DaveMlsCommitWelcome):
            out = service.commit_welcome(p.user_id, m.payload, now)
        elif isinstance(m, gw.DaveTransitionReady):
            out = service.transition_ready(p.user_id, m.transition_id, now)
        elif isinstance(m, gw.DaveMlsInvalidCommitWelcome):
            out = service.invalid_commit_welcome(p.user_id, m.transition_id, now)
        else:
            return
        self._route(call, out)

    def hold_dave(self, channel_id: str) -> None:
        """Hold a call's DAVE proposals back (see :meth:`DaveDeliveryService.hold`)."""
        service = self._dave_service(self.call(channel_id))
        if service is not None:
            service.hold()

    def release_dave(self, channel_id: str) -> None:
        """Send what a call's DAVE service held back, batched."""
        call = self.calls.get(channel_id)
        if call is not None and call.dave is not None:
            self._route(call, call.dave.release(self._now()))
            self._on_change()

    def inject_invalid_commit(self, user_id: str) -> bool:
        """Corrupt the next op 29/30 sent to ``user_id`` (it must answer op 31).

        Returns:
            Whether the user is in a call with DAVE.
        """
        p = self._by_user.get(user_id)
        call = self.calls.get(p.channel_id) if p is not None else None
        if call is None or call.dave is None or not p or not p.dave_joined:
            return False
        call.dave.inject_fault(user_id)
        return True

    def _route(self, call: _Call, out: Iterable[tuple[str, gw.GatewayMessage]]) -> None:
        """Send what a call's DAVE service returned; re-arm its timer for the next deadline."""
        for user_id, message in out:
            target = call.members.get(user_id)
            if target is None:
                self._count("dave_undeliverable")
                continue
            self.send(target, message)
        deadline = None if call.dave is None or self._stopped else call.dave.next_deadline()
        if deadline == call.dave_deadline:
            return
        if call.dave_timer is not None:
            call.dave_timer.cancel()
        call.dave_deadline = deadline
        call.dave_timer = (
            None
            if deadline is None
            else self.clock.call_at(deadline, functools.partial(self._dave_due, call))
        )

    def _dave_due(self, call: _Call) -> None:
        """A transition deadline passed: op 22 to those who had not sent op 23."""
        deadline, call.dave_deadline, call.dave_timer = call.dave_deadline, None, None
        if call.dave is None or deadline is None:
            return
        # The timer is for that deadline: never pass an earlier now (a loop may fire early).
        self._route(call, call.dave.tick(max(self._now(), deadline)))
        self._on_change()

    # -- WebSocket glue ---------------------------------------------------------------------

    async def serve(self, ws: ServerConnection) -> None:
        """Run one WebSocket connection (the ``websockets`` handler)."""
        link = WebSocketLink(ws)
        conn = self.open(link)
        try:
            async for frame in ws:
                self.receive(conn, frame)
        except ConnectionClosed:
            pass
        finally:
            received = ws.close_code
            self.closed(conn, received)
            await link.finish()


def check_voice_request(ws: ServerConnection, request: Request) -> Response | None:
    """Refuse upgrade requests without a gateway version of at least 4 (§1.1)."""
    query = parse_qs(urlsplit(request.path).query)
    try:
        version = int(query["v"][0])
    except (KeyError, ValueError):
        version = 0
    if version < 4:
        return ws.respond(HTTPStatus.BAD_REQUEST, "voice gateway version v>=4 required\n")
    return None
