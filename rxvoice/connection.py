"""The voice connection: one Discord voice session as a set of observables.

:class:`Connection` coordinates the four parts of a voice connection:

- ``web_socket`` (:class:`~rxvoice.transport.websocket.WebSocketTransport`):
  the voice gateway WebSocket and its heartbeat;
- ``udp`` (:class:`~rxvoice.transport.udp.UdpTransport`): IP discovery,
  keepalive, RTP send and receive;
- ``rtp`` (:class:`~rxvoice.protocol.crypto.RtpCrypto`): transport encryption
  and the sequence/timestamp/nonce counters;
- ``dave`` (:class:`~rxvoice.protocol.dave.DaveManager`): the DAVE MLS session
  and per-user decryption;

plus ``jitters`` (one :class:`~rxvoice.protocol.jitter.JitterBuffer` per SSRC,
the receiver's) and ``shard`` (main-gateway integration).

The class is the coordinator; each job lives in its own module of
:mod:`rxvoice._voice`: credentials and moves (``credentials``), the run with
its close policy (``runner``), one voice session with its keys, DAVE, receiver
and tasks (``session``), and sending (``sender``). The receive path itself is
the sans-I/O :class:`~rxvoice.protocol.receiver.VoiceReceiver`.

Every event is a hot observable (subscribe before :meth:`Connection.connect`
to see everything); only :attr:`Connection.state` replays (its current value).
A subscriber that raises does not affect the connection or other subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from reactivex import Observable
from reactivex import operators as ops

from rxvoice._voice.credentials import Credentials
from rxvoice._voice.runner import Run
from rxvoice._voice.sender import Sender
from rxvoice._voice.session import Session
from rxvoice.errors import ConnectionClosed, ReconnectInProgress, UsageError
from rxvoice.events import (
    AudioFrame,
    AudioGap,
    ClientConnect,
    ClientDisconnect,
    ConnectionState,
    DaveEpochTransition,
    Diagnostic,
    DiagnosticKind,
    Disconnected,
    SpeakingEvent,
    SpeakingFlags,
)
from rxvoice.protocol.crypto import RtpCrypto
from rxvoice.protocol.dave import DAVE_PROTOCOL_VERSION, DaveManager
from rxvoice.protocol.gateway import GatewayMessage, serialize, snowflake_argument
from rxvoice.protocol.jitter import JitterBuffer
from rxvoice.protocol.receiver import ReceiverStats
from rxvoice.protocol.session import VoiceServerInfo
from rxvoice.protocol.ssrcmap import SsrcMap
from rxvoice.secret import Secret
from rxvoice.shard.base import Shard
from rxvoice.streams import EventStream, StateStream
from rxvoice.transport.udp import UdpTransport
from rxvoice.transport.websocket import WebSocketTransport

__all__ = ["Connection", "ConnectionStats"]


@dataclass(slots=True)
class ConnectionStats(ReceiverStats):
    """What the connection counted (problems it survived included).

    The receive counters are :class:`~rxvoice.protocol.receiver.ReceiverStats`'
    (every session's receiver adds to them); the rest are the connection's:

    Attributes:
        messages_received: Voice-gateway messages parsed.
        malformed_messages: Frames that could not be parsed (skipped).
        unexpected_messages: Well-formed messages at the wrong time, e.g. a
            second op 2 or op 4 in one session (ignored: state is kept).
        failed_messages: Messages whose handling raised (a bug, or a library
            refusing the input); logged with the traceback, and the call goes on.
        frames_sent: Opus frames sent.
        frames_dropped: Frames :meth:`Connection.send_opus` dropped while the
            connection was coming back (resuming or in a new session).
        reconnects: New sessions after the first (new SSRC, keys and DAVE group).
        resumes: Resumes (same session, new WebSocket).
    """

    messages_received: int = 0
    malformed_messages: int = 0
    unexpected_messages: int = 0
    failed_messages: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0
    reconnects: int = 0
    resumes: int = 0


class Connection:
    """A Discord voice connection whose events are observables.

    Credentials come either from a ``shard`` (``connect()`` then sends op 4 and
    waits for ``VOICE_STATE_UPDATE`` and ``VOICE_SERVER_UPDATE``) or are given
    directly (``session_id``, ``token``, ``endpoint``).

    Args:
        guild_id: The guild of the voice channel.
        channel_id: The voice channel (also the DAVE MLS group id).
        user_id: Our user id; taken from the shard when omitted.
        shard: The main-gateway shard used to request voice credentials.
        session_id: The voice session id, when not using a shard.
        token: The voice token, when not using a shard (kept as a :class:`Secret`).
        endpoint: The voice server ``host:port``, when not using a shard.
        ssl: TLS context for the voice WebSocket (the sandbox gives one).
        max_dave_protocol_version: Highest DAVE version to offer (0 disables DAVE,
            which Discord refuses with close code 4017 since 2026-03-01).
        self_mute: Sent with op 4.
        self_deaf: Sent with op 4.
        jitter_latency: Seconds a jitter buffer waits for a missing packet.
        jitter_capacity: Packets a jitter buffer may hold per SSRC.
        unmapped_hold: Seconds packets from an SSRC without a known user are held.
        dave_failure_tolerance: DAVE decryption failures in a row (in a settled
            group, nothing decrypted in between) tolerated before the DAVE
            session re-initialises (rate-limited: see ``DaveManager``).
        max_missed_heartbeats: Unacknowledged heartbeats before resuming.
        keepalive_interval: Seconds between UDP keepalives, which keep the
            media path open (NAT bindings, the voice server) through silence.
        max_reconnect_attempts: Consecutive failed (re)connects before giving up.
        move_timeout: Seconds to wait, after close code 4014, for the new voice
            server credentials of a move before treating it as a kick.
        endpoint_timeout: Seconds to wait, after ``VOICE_SERVER_UPDATE`` brought
            a null endpoint, for the next voice server.
        logger: Where to log; ``logging.getLogger("rxvoice.connection")`` by default.

    Example:
        >>> async with Connection(guild_id=g, channel_id=c, shard=shard) as conn:  # doctest: +SKIP
        ...     conn.on_audio_frame.subscribe(print)
        ...     await conn.connect()
    """

    def __init__(
        self,
        *,
        guild_id: str | int,
        channel_id: str | int,
        user_id: str | int | None = None,
        shard: Shard | None = None,
        session_id: str | None = None,
        token: str | Secret[str] | None = None,
        endpoint: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        max_dave_protocol_version: int = DAVE_PROTOCOL_VERSION,
        self_mute: bool = False,
        self_deaf: bool = False,
        jitter_latency: float = 0.06,
        jitter_capacity: int = 64,
        unmapped_hold: float = 1.0,
        dave_failure_tolerance: int = 36,
        max_missed_heartbeats: int = 3,
        keepalive_interval: float = 5.0,
        max_reconnect_attempts: int = 5,
        move_timeout: float = 5.0,
        endpoint_timeout: float = 60.0,
        logger: logging.Logger | None = None,
    ) -> None:
        # Checked here: a bad id would otherwise fail deep in the handshake.
        self.guild_id = snowflake_argument(guild_id, "guild_id")
        self.channel_id = snowflake_argument(channel_id, "channel_id")
        self._user_id = snowflake_argument(user_id, "user_id") if user_id is not None else None
        self.shard = shard
        self.session_id = session_id
        self.token: Secret[str] | None = (
            token if isinstance(token, Secret) or token is None else Secret(token)
        )
        self.endpoint = endpoint
        self.ssl = ssl
        self.max_dave_protocol_version = max_dave_protocol_version
        self.self_mute, self.self_deaf = self_mute, self_deaf
        self.jitter_latency, self.jitter_capacity = jitter_latency, jitter_capacity
        self.unmapped_hold = unmapped_hold
        self.dave_failure_tolerance = dave_failure_tolerance
        self.max_missed_heartbeats = max_missed_heartbeats
        self.keepalive_interval = keepalive_interval
        self.max_reconnect_attempts = max_reconnect_attempts
        self.move_timeout = move_timeout
        self.endpoint_timeout = endpoint_timeout
        self.logger = logger if logger is not None else logging.getLogger(__name__)

        # The transports; keys, DAVE and jitter buffers belong to the session.
        self.web_socket = WebSocketTransport()
        self.udp = UdpTransport(self._on_datagrams)
        self.stats = ConnectionStats()
        self._credentials = Credentials(self)
        self._sender = Sender(self)
        self._run: Run | None = None  # while connecting or connected
        self._closed_with: ConnectionClosed | None = None  # how the last run ended
        self._reconnecting = asyncio.Lock()
        self._unwinding: set[asyncio.Task[None]] = set()  # cancelled, not finished yet

        # Observables (hot; see the module docstring).
        self._state: StateStream[ConnectionState] = StateStream(ConnectionState.IDLE)
        self._on_connected: EventStream[None] = EventStream()
        self._on_disconnected: EventStream[Disconnected] = EventStream()
        self._on_ready: EventStream[None] = EventStream()
        self._on_heartbeat: EventStream[float] = EventStream()
        self._on_raw_message: EventStream[GatewayMessage] = EventStream()
        self._on_speaking: EventStream[SpeakingEvent] = EventStream()
        self._on_client_connect: EventStream[ClientConnect] = EventStream()
        self._on_client_disconnect: EventStream[ClientDisconnect] = EventStream()
        self._on_dave_epoch_transition: EventStream[DaveEpochTransition] = EventStream()
        self._on_raw_audio_frame: EventStream[AudioFrame] = EventStream()
        self._on_audio_frame: EventStream[AudioFrame] = EventStream()
        self._on_audio_gap: EventStream[AudioGap] = EventStream()
        self._on_diagnostic: EventStream[Diagnostic] = EventStream()
        self._streams: tuple[EventStream[Any] | StateStream[Any], ...] = (
            self._state,
            self._on_connected,
            self._on_disconnected,
            self._on_ready,
            self._on_heartbeat,
            self._on_raw_message,
            self._on_speaking,
            self._on_client_connect,
            self._on_client_disconnect,
            self._on_dave_epoch_transition,
            self._on_raw_audio_frame,
            self._on_audio_frame,
            self._on_audio_gap,
            self._on_diagnostic,
        )

    def __repr__(self) -> str:
        return (
            f"Connection(guild_id={self.guild_id!r}, channel_id={self.channel_id!r}, "
            f"user_id={self._user_id!r}, state={self.current_state.value!r})"
        )

    # -- properties ---------------------------------------------------------------------

    @property
    def user_id(self) -> str | None:
        """Our user id (given, or learned from the shard)."""
        if self._user_id is None and self.shard is not None:
            return self.shard.user_id
        return self._user_id

    @property
    def current_state(self) -> ConnectionState:
        """The state right now."""
        return self._state.value

    @property
    def ssrc(self) -> int | None:
        """Our SSRC, once Ready arrived."""
        session = self._session
        return session.gateway.ssrc if session is not None else None

    @property
    def rtp(self) -> RtpCrypto | None:
        """Transport encryption and the send counters; ``None`` until the Session Description."""
        session = self._session
        return session.rtp if session is not None else None

    @property
    def dave(self) -> DaveManager | None:
        """The DAVE session and per-user decryption; ``None`` until the Session Description."""
        session = self._session
        return session.dave if session is not None else None

    @property
    def jitters(self) -> dict[int, JitterBuffer[AudioFrame]]:
        """The session's jitter buffers, one per SSRC (empty without a session)."""
        session = self._session
        return session.receiver.jitters if session is not None else {}

    @property
    def ssrcs(self) -> SsrcMap[Any]:
        """The session's SSRC-to-user attribution (op 5), with the packets it holds."""
        session = self._session
        return session.receiver.ssrcs if session is not None else SsrcMap()

    @property
    def users(self) -> set[str]:
        """Who else is in the call (op 11 / op 13), for the current session."""
        session = self._session
        return session.users if session is not None else set()

    @property
    def _session(self) -> Session | None:
        run = self._run
        return run.session if run is not None else None

    # -- observables --------------------------------------------------------------------

    @property
    def state(self) -> Observable[ConnectionState]:
        """Connection state changes; replays the current state to new subscribers."""
        return self._state

    @property
    def on_connected(self) -> Observable[None]:
        """The voice WebSocket is authenticated (after Ready or Resumed)."""
        return self._on_connected

    @property
    def on_disconnected(self) -> Observable[Disconnected]:
        """The voice WebSocket closed: close code, whether rxvoice reconnects, why."""
        return self._on_disconnected

    @property
    def on_ready(self) -> Observable[None]:
        """A new voice session is ready to send and receive audio (Session Description)."""
        return self._on_ready

    @property
    def on_heartbeat(self) -> Observable[float]:
        """Heartbeat round-trip times in seconds, one per ACK."""
        return self._on_heartbeat

    @property
    def on_raw_message(self) -> Observable[GatewayMessage]:
        """Every voice-gateway message received, parsed."""
        return self._on_raw_message

    @property
    def on_speaking(self) -> Observable[SpeakingEvent]:
        """Users' speaking state (op 5): user id, SSRC, flags."""
        return self._on_speaking

    @property
    def on_client_connect(self) -> Observable[ClientConnect]:
        """A user joined the channel (one event per user of op 11)."""
        return self._on_client_connect

    @property
    def on_client_disconnect(self) -> Observable[ClientDisconnect]:
        """A user left the channel (op 13)."""
        return self._on_client_disconnect

    @property
    def on_dave_epoch_transition(self) -> Observable[DaveEpochTransition]:
        """A DAVE transition executed: epoch, protocol version, members, privacy code."""
        return self._on_dave_epoch_transition

    @property
    def on_raw_audio_frame(self) -> Observable[AudioFrame]:
        """Every audio packet as it arrives, both encryption layers removed."""
        return self._on_raw_audio_frame

    @property
    def on_audio_frame(self) -> Observable[AudioFrame]:
        """Audio packets after the per-SSRC jitter buffer: in order, duplicates dropped."""
        return self._on_audio_frame

    @property
    def on_audio_gap(self) -> Observable[AudioGap]:
        """Holes in :attr:`on_audio_frame`'s per-user streams (loss, or frames lost to DAVE).

        Each is emitted where it falls among :attr:`on_audio_frame`'s values,
        and counted in ``stats.frames_lost`` (``frames_lost_to_dave``).
        """
        return self._on_audio_gap

    @property
    def on_diagnostic(self) -> Observable[Diagnostic]:
        """Problems the connection survived (malformed input, decryption failures...)."""
        return self._on_diagnostic

    def on_user_audio(self, user_id: str) -> Observable[AudioFrame]:
        """Shorthand: :attr:`on_audio_frame` filtered to one user."""

        def mine(frame: AudioFrame) -> bool:
            return frame.user_id == user_id

        return self._on_audio_frame.pipe(ops.filter(mine))

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self, *, timeout: float = 30.0) -> None:
        """Open the voice connection and return once it can send and receive audio.

        Without credentials, they are requested through the shard first. The
        session then lives until a final close: drops, 4015, missed heartbeat
        ACKs and :meth:`reconnect` resume it (same SSRC, keys and DAVE group,
        missed messages replayed); a close ends it, and a later ``connect()``
        identifies anew.

        Raises:
            UsageError: If already connecting or connected, or no credentials can
                be had.
            ConnectionClosed: If the server closed the connection for good
                (:class:`~rxvoice.errors.DaveRequired` for 4017).
            TimeoutError: If the connection was not ready in ``timeout`` seconds.
        """
        if self._state.is_stopped:  # close() completed the streams
            raise UsageError("this connection was closed with close(); create a new one")
        if self._run is not None:
            raise UsageError("the connection is already connecting or connected")
        try:
            self._credentials.check()
        except UsageError:
            self.force_close()
            raise
        # A closed connection keeps no session: connect() always starts a new
        # one; resuming happens inside the run while the session lives.
        run = self._run = Run(self)
        run.start()
        try:
            await asyncio.wait_for(asyncio.shield(run.ready), timeout)
        except BaseException:
            if self._run is run:
                self.force_close()
            raise

    async def reconnect(self, *, timeout: float = 30.0) -> None:
        """Drop the voice WebSocket and connect again (resuming when possible).

        Raises:
            ReconnectInProgress: If another reconnect is running.
        """
        if self._reconnecting.locked():
            raise ReconnectInProgress("a reconnect is already in progress")
        async with self._reconnecting:
            run = self._run
            if run is None:
                await self.connect(timeout=timeout)
                return
            ready = run.renew_ready()
            self.web_socket.abort()  # the run resumes
            await asyncio.wait_for(asyncio.shield(ready), timeout)

    def force_close(self, code: int | None = None) -> None:
        """Close the voice connection now and release every task, socket and session.

        Synchronous and idempotent: safe from a signal handler or a ``finally``.
        Observables stay subscribed (a later :meth:`connect` starts a new session);
        :meth:`close` also completes them.

        Args:
            code: A close code to send to the server (none by default).
        """
        run, self._run = self._run, None
        if run is not None:
            was_open = self.current_state not in (ConnectionState.IDLE, ConnectionState.CLOSED)
            for task in run.stop(code):
                self._unwinding.add(task)
                task.add_done_callback(self._unwinding.discard)
        else:
            was_open = False  # already closed (or called again from what this call emits)
        self._set_state(ConnectionState.CLOSED)
        if was_open:
            self._on_disconnected.on_next(Disconnected(code, False, "closed locally"))

    async def disconnect(self) -> None:
        """Leave the voice channel (op 4 with no channel, through the shard), then :meth:`close`."""
        try:
            if self.shard is not None:
                with contextlib.suppress(UsageError):
                    await self.shard.update_voice_state(self.guild_id, None)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the connection (see :meth:`force_close`) and complete every observable.

        Returns once the tasks it cancelled have ended.
        """
        self.force_close(1000 if self.web_socket.is_open else None)
        ending = self._unwinding - {asyncio.current_task()}
        if ending:
            await asyncio.wait(ending)
        for stream in self._streams:
            stream.on_completed()

    # -- sending ------------------------------------------------------------------------

    async def send(self, data: str | bytes | GatewayMessage) -> None:
        """Send a raw message to the voice gateway.

        Args:
            data: A JSON text frame (``str``), a binary frame (``bytes``), or a
                message dataclass from :mod:`rxvoice.protocol.gateway`.

        Raises:
            UsageError: If the voice WebSocket is not open.
        """
        if not isinstance(data, (str, bytes)):
            data = serialize(data)
        await self.web_socket.send(data)

    async def request_voice(self, *, timeout: float = 10.0) -> VoiceServerInfo:
        """Ask the main gateway for a voice server (op 4) and wait for the credentials.

        Raises:
            UsageError: Without a shard.
            TimeoutError: If the two voice dispatches did not arrive in time.
        """
        return await self._credentials.request(timeout)

    async def set_speaking(self, flags: int = SpeakingFlags.MICROPHONE) -> None:
        """Set our speaking state (op 5): Microphone 1, Soundshare 2, Priority 4; 0 = off.

        Raises:
            UsageError: If the connection is not ready.
        """
        await self._sender.set_speaking(flags)

    async def send_opus(self, frame: bytes) -> None:
        """DAVE-encrypt, packetise, transport-encrypt and send one 20 ms Opus frame.

        Sends op 5 (Microphone) first if we are not speaking yet. Pace calls
        yourself every 20 ms, or use :meth:`play_opus`. While the connection
        comes back (a resume, a new session after 4006 or a move, the first
        connect still under way), the frame is dropped and counted in
        ``stats.frames_dropped``: real-time audio cannot wait.

        Raises:
            ConnectionClosed: If the connection closed for good (its code and reason).
            UsageError: If the connection was never connected.
        """
        await self._sender.send_opus(frame)

    async def stop_speaking(self) -> None:
        """Send five silence frames (no Opus interpolation artefacts), then op 5 off.

        Raises:
            ConnectionClosed: If the connection closed for good.
            UsageError: If the connection was never connected.
        """
        await self._sender.stop_speaking()

    async def play_opus(
        self, frames: Iterable[bytes] | AsyncIterable[bytes], *, stop: bool = True
    ) -> int:
        """Send Opus frames paced at 20 ms on the event loop's clock.

        While the connection comes back (a resume, a new session, a move),
        playback pauses: no frame is taken from ``frames`` until it is ready
        again, then pacing starts afresh (discord.js's player does the same).

        Args:
            frames: 20 ms Opus frames, sync or async iterable.
            stop: Send the five silence frames and op 5 off at the end.

        Returns:
            How many frames were sent.

        Raises:
            ConnectionClosed: If the connection closed for good, before or
                during playback.
            UsageError: If the connection was never connected.
        """
        return await self._sender.play_opus(frames, stop)

    # -- helpers ------------------------------------------------------------------------

    def _on_datagrams(self, batch: list[bytes]) -> None:
        session = self._session
        if session is not None:
            session.on_datagrams(batch)

    def _set_state(self, state: ConnectionState) -> None:
        if self._state.value is not state:
            self._state.on_next(state)

    def _diagnose(
        self,
        kind: DiagnosticKind,
        detail: str,
        ssrc: int | None = None,
        user_id: str | None = None,
    ) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("%s: %s (ssrc=%s user=%s)", kind.value, detail, ssrc, user_id)
        self._on_diagnostic.on_next(Diagnostic(kind, detail, ssrc, user_id))
