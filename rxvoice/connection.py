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

plus ``jitters`` (one :class:`~rxvoice.protocol.jitter.JitterBuffer` per SSRC)
and ``shard`` (main-gateway integration).

Every event is a hot observable (subscribe before :meth:`Connection.connect`
to see everything); only :attr:`Connection.state` replays (its current value).
A subscriber that raises does not affect the connection or other subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterable, Coroutine, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from reactivex import Observable
from reactivex import operators as ops

from rxvoice.errors import (
    ConnectionClosed,
    DaveRequired,
    MalformedMessage,
    ProtocolError,
    ReconnectInProgress,
    UsageError,
)
from rxvoice.events import (
    AudioFrame,
    ClientConnect,
    ClientDisconnect,
    ConnectionState,
    DaveEpochTransition,
    Diagnostic,
    Disconnected,
    SpeakingEvent,
    SpeakingFlags,
)
from rxvoice.protocol.closecodes import CloseCode, ClosePolicy, close_policy, describe_close
from rxvoice.protocol.crypto import EncryptionMode, RtpCrypto, choose_mode
from rxvoice.protocol.dave import DAVE_PROTOCOL_VERSION, DaveManager
from rxvoice.protocol.daveframe import is_dave_frame
from rxvoice.protocol.gateway import (
    ClientDisconnect as ClientDisconnectMessage,
)
from rxvoice.protocol.gateway import (
    ClientsConnect,
    GatewayMessage,
    Hello,
    Ready,
    Resumed,
    SelectProtocol,
    SessionDescription,
    Speaking,
    serialize,
)
from rxvoice.protocol.gateway import HeartbeatAck as HeartbeatAckMessage
from rxvoice.protocol.jitter import JitterBuffer, JitterPacket, Release
from rxvoice.protocol.rtp import OPUS_PAYLOAD_TYPE, SILENCE_FRAME, DatagramKind, classify
from rxvoice.protocol.session import VoiceServerInfo, VoiceSession, voice_url
from rxvoice.protocol.ssrcmap import SsrcMap
from rxvoice.secret import Secret
from rxvoice.shard.base import Shard, VoiceServerUpdate, VoiceStateUpdate, VoiceUpdate
from rxvoice.streams import EventStream, StateStream
from rxvoice.transport.udp import UdpTransport
from rxvoice.transport.websocket import WebSocketTransport

__all__ = ["Connection", "ConnectionStats"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

FRAME_DURATION = 0.020
SAMPLES_PER_FRAME = 960
SILENCE_FRAMES_ON_STOP = 5
# How long, and how many, frames that failed DAVE decryption are kept for a
# retry once the commit that explains them is processed (a sender may switch
# keys before our copy of the commit arrives, e.g. across a resume).
RETRY_WINDOW = 2.0
RETRY_LIMIT = 256


@dataclass(slots=True)
class ConnectionStats:
    """What the connection counted (problems it survived included)."""

    messages_received: int = 0
    malformed_messages: int = 0
    packets_received: int = 0
    packets_decrypted: int = 0
    rtcp_received: int = 0
    other_datagrams: int = 0
    malformed_packets: int = 0
    undecryptable_packets: int = 0
    dave_failures: int = 0
    unmapped_expired: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0
    reconnects: int = 0
    resumes: int = 0


class _Reconnect(Exception):
    """Internal: the current WebSocket must be replaced."""


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
        dave_failure_tolerance: DAVE decryption failures in a row tolerated per
            user before the DAVE session re-initialises.
        max_missed_heartbeats: Unacknowledged heartbeats before resuming.
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
        max_reconnect_attempts: int = 5,
        move_timeout: float = 5.0,
        endpoint_timeout: float = 60.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.guild_id = str(guild_id)
        self.channel_id = str(channel_id)
        self._user_id = str(user_id) if user_id is not None else None
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
        self.dave_failure_tolerance = dave_failure_tolerance
        self.max_missed_heartbeats = max_missed_heartbeats
        self.max_reconnect_attempts = max_reconnect_attempts
        self.logger = logger if logger is not None else logging.getLogger(__name__)

        # The four parts, plus jitter buffers and SSRC attribution.
        self.web_socket = WebSocketTransport()
        self.udp = UdpTransport(self._on_datagrams)
        self.rtp: RtpCrypto | None = None
        self.dave: DaveManager | None = None
        self.jitters: dict[int, JitterBuffer[AudioFrame]] = {}
        self.ssrcs: SsrcMap[bytes] = SsrcMap(hold_time=unmapped_hold)
        self.users: set[str] = set()  # who else is in the call (op 11 / op 13)
        # Frames that failed DAVE decryption, kept to retry after the next transition.
        self._undecrypted: deque[tuple[float, str, int, bytes]] = deque()
        self.stats = ConnectionStats()

        self._session: VoiceSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closing = False
        self._reconnecting = False
        self._heartbeat_dead = False
        self._in_force_close = False
        self._disposed = False  # close() completed the streams: no reuse
        self._requesting = False  # request_voice() is waiting for its own dispatches
        self._given_credentials = bool(session_id and token and endpoint)
        self._last_epoch = 0
        self._readies = 0
        # Credentials the shard announced while we were connected (move, reallocation).
        self._new_info: VoiceServerInfo | None = None
        self._info_arrived = asyncio.Event()
        self._awaiting_endpoint = False
        self.move_timeout = move_timeout
        self.endpoint_timeout = endpoint_timeout
        self._speaking = SpeakingFlags.NONE
        self._voice_updates: Any = None

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
        return self._session.ssrc if self._session is not None else None

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
        """Heartbeat round-trip times in milliseconds, one per ACK."""
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
        if self._disposed:
            raise UsageError("this connection was closed with close(); create a new one")
        if self._runner is not None and not self._runner.done():
            raise UsageError("the connection is already connecting or connected")
        self._closing = False
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        try:
            # A closed connection keeps no session: connect() always starts a new
            # one; resuming happens inside the runner while the session lives.
            self._session = VoiceSession(
                await self._credentials(),
                max_dave_protocol_version=self.max_dave_protocol_version,
                max_missed_heartbeats=self.max_missed_heartbeats,
            )
            self._watch_shard()
            self._runner = loop.create_task(self._run(), name="rxvoice-connection")
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except BaseException:
            if not self._closing:
                self.force_close()
            raise

    async def reconnect(self, *, timeout: float = 30.0) -> None:
        """Drop the voice WebSocket and connect again (resuming when possible).

        Raises:
            ReconnectInProgress: If another reconnect is running.
        """
        if self._reconnecting:
            raise ReconnectInProgress("a reconnect is already in progress")
        self._reconnecting = True
        try:
            if self._runner is None or self._runner.done():
                await self.connect(timeout=timeout)
                return
            if self._ready is None or self._ready.done():
                self._ready = asyncio.get_running_loop().create_future()
            self.web_socket.abort()  # the runner resumes
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        finally:
            self._reconnecting = False

    def force_close(self, code: int | None = None) -> None:
        """Close the voice connection now and release every task, socket and session.

        Synchronous and idempotent: safe from a signal handler or a ``finally``.
        Observables stay subscribed (a later :meth:`connect` starts a new session);
        :meth:`close` also completes them.

        Args:
            code: A close code to send to the server (none by default).
        """
        if self._in_force_close:
            return  # called again from a subscriber of what this call emits
        self._in_force_close = True
        try:
            self._force_close(code)
        finally:
            self._in_force_close = False

    def _force_close(self, code: int | None) -> None:
        was_open = self.current_state not in (ConnectionState.IDLE, ConnectionState.CLOSED)
        self._closing = True
        # Cancelling the current task too (force_close called from a subscriber
        # inside the runner) stops it at its next await.
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        self.web_socket.abort(code)
        self.udp.close()
        self._teardown_session()
        self._session = None
        self._new_info, self._awaiting_endpoint = None, False
        self._heartbeat_dead = False
        self._info_arrived.clear()
        if self._voice_updates is not None:
            self._voice_updates.dispose()
            self._voice_updates = None
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ConnectionClosed(code, "closed locally"))
            self._ready.exception()  # mark retrieved: nobody may be waiting
        self._set_state(ConnectionState.CLOSED)
        if was_open:
            self._emit(self._on_disconnected, Disconnected(code, False, "closed locally"))

    async def disconnect(self) -> None:
        """Leave the voice channel (op 4 with no channel, through the shard), then :meth:`close`."""
        try:
            if self.shard is not None:
                with contextlib.suppress(UsageError):
                    await self.shard.update_voice_state(self.guild_id, None)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the connection (see :meth:`force_close`) and complete every observable."""
        self.force_close(1000 if self.web_socket.is_open else None)
        self._disposed = True
        await asyncio.sleep(0)  # let cancelled tasks finish
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
        shard = self.shard
        if shard is None:
            raise UsageError("request_voice needs a shard")
        loop = asyncio.get_running_loop()
        got: asyncio.Future[VoiceServerInfo] = loop.create_future()
        state: dict[str, Any] = {}

        def on_update(update: VoiceUpdate) -> None:
            if got.done():
                return
            if isinstance(update, VoiceStateUpdate):
                if update.user_id == self.user_id and update.guild_id in (None, self.guild_id):
                    state["session_id"] = update.session_id
            elif update.guild_id == self.guild_id and update.endpoint is not None:
                state["server"] = update
            if "session_id" in state and "server" in state:
                server: VoiceServerUpdate = state["server"]
                user_id = self.user_id
                assert user_id is not None
                assert server.endpoint is not None
                got.set_result(
                    VoiceServerInfo(
                        guild_id=self.guild_id,
                        channel_id=self.channel_id,
                        user_id=user_id,
                        session_id=state["session_id"],
                        token=server.token,
                        endpoint=server.endpoint,
                    )
                )

        subscription = shard.voice_updates.subscribe(on_update)
        # Our own request's answer is not a move: keep _on_voice_update out of it.
        self._requesting = True
        try:
            await shard.update_voice_state(
                self.guild_id, self.channel_id, self_mute=self.self_mute, self_deaf=self.self_deaf
            )
            info = await asyncio.wait_for(got, timeout)
        finally:
            self._requesting = False
            subscription.dispose()
        self._new_info = None
        self._info_arrived.clear()
        self.session_id, self.token, self.endpoint = info.session_id, info.token, info.endpoint
        self._user_id = info.user_id
        return info

    async def set_speaking(self, flags: int = SpeakingFlags.MICROPHONE) -> None:
        """Set our speaking state (op 5): Microphone 1, Soundshare 2, Priority 4; 0 = off.

        Raises:
            UsageError: If the connection is not ready.
        """
        ssrc = self.ssrc
        if ssrc is None:
            raise UsageError("not connected")
        self._speaking = SpeakingFlags(flags)
        await self.send(Speaking(speaking=int(flags), ssrc=ssrc, delay=0))

    async def send_opus(self, frame: bytes) -> None:
        """DAVE-encrypt, packetise, transport-encrypt and send one 20 ms Opus frame.

        Sends op 5 (Microphone) first if we are not speaking yet. Pace calls
        yourself every 20 ms, or use :meth:`play_opus`. While the WebSocket
        resumes, frames are dropped (and counted): real-time audio cannot wait.

        Raises:
            UsageError: If the connection is not ready.
        """
        if self._can_send(frame):
            if not self._speaking:
                await self.set_speaking(SpeakingFlags.MICROPHONE)
            self._send_frame(frame)

    async def stop_speaking(self) -> None:
        """Send five silence frames (no Opus interpolation artefacts), then op 5 off.

        Raises:
            UsageError: If the connection is not ready.
        """
        for _ in range(SILENCE_FRAMES_ON_STOP):
            if self._can_send(SILENCE_FRAME):
                self._send_frame(SILENCE_FRAME)
            await asyncio.sleep(FRAME_DURATION)
        if self.current_state is ConnectionState.READY:
            await self.set_speaking(SpeakingFlags.NONE)

    def _can_send(self, frame: bytes) -> bool:
        state = self.current_state
        if self.rtp is not None and self.dave is not None:
            if state is ConnectionState.READY:
                return True
            if state is ConnectionState.RESUMING:
                self.stats.frames_dropped += 1
                return False
        raise UsageError("the connection is not ready to send audio")

    async def play_opus(
        self, frames: Iterable[bytes] | AsyncIterable[bytes], *, stop: bool = True
    ) -> int:
        """Send Opus frames paced at 20 ms on the event loop's clock.

        Args:
            frames: 20 ms Opus frames, sync or async iterable.
            stop: Send the five silence frames and op 5 off at the end.

        Returns:
            How many frames were sent.
        """
        loop = asyncio.get_running_loop()
        sent = 0
        deadline = loop.time()

        async def pace(frame: bytes) -> None:
            nonlocal deadline, sent
            await self.send_opus(frame)
            sent += 1
            deadline += FRAME_DURATION
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                deadline = loop.time()  # we fell behind: do not burst to catch up

        try:
            if isinstance(frames, AsyncIterable):
                async for frame in frames:
                    await pace(frame)
            else:
                for frame in frames:
                    await pace(frame)
        finally:
            # Also when cancelled or failing midway: end the talk spurt cleanly.
            if stop and sent and self.current_state is ConnectionState.READY:
                await asyncio.shield(self.stop_speaking())
        return sent

    def _send_frame(self, frame: bytes) -> None:
        assert self.rtp is not None and self.dave is not None
        payload = self.dave.encrypt(frame)
        self.udp.send(self.rtp.seal_opus(payload, samples=SAMPLES_PER_FRAME))
        self.stats.frames_sent += 1

    # -- the session runner -------------------------------------------------------------

    async def _credentials(self) -> VoiceServerInfo:
        # Voice credentials are never cached (protocol.md §2): with a shard, every
        # new session asks for fresh ones; given ones are used as given.
        if self._given_credentials or self.shard is None:
            if not (self.session_id and self.token is not None and self.endpoint):
                raise UsageError("give session_id, token and endpoint, or a shard to request them")
            user_id = self.user_id
            if user_id is None:
                raise UsageError("user_id is needed when credentials are given directly")
            return VoiceServerInfo(
                guild_id=self.guild_id,
                channel_id=self.channel_id,
                user_id=user_id,
                session_id=self.session_id,
                token=self.token,
                endpoint=self.endpoint,
            )
        return await self.request_voice()

    async def _run(self) -> None:
        try:
            await self._run_sessions()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug or an unforeseen failure: end visibly and release everything.
            self.logger.exception("voice connection failed")
            reason = f"internal error: {exc!r}"
            self._emit(self._on_disconnected, Disconnected(None, False, reason))
            self._finish(None, reason)

    async def _run_sessions(self) -> None:
        failures, resume = 0, False
        while not self._closing:
            readies = self._readies
            code = await self._one_websocket(resume)
            if self._closing:
                return
            session = self._session
            assert session is not None
            if self._readies != readies:
                failures = 0  # this WebSocket got ready: start counting afresh
            policy, reason = await self._policy_after_close(code, session)
            failures += 1
            if policy is not ClosePolicy.FINAL and failures > self.max_reconnect_attempts:
                policy, reason = ClosePolicy.FINAL, f"{reason} (gave up after {failures - 1} tries)"
            will_reconnect = policy is not ClosePolicy.FINAL
            self.logger.info(
                "voice WebSocket closed (%s): %s; %s", code, reason, policy.value.replace("_", " ")
            )
            self._emit(self._on_disconnected, Disconnected(code, will_reconnect, reason))
            if not will_reconnect:
                self._finish(code, reason)
                return
            if failures > 1:
                await asyncio.sleep(min(0.25 * 2 ** (failures - 2), 5.0))
            resume = policy is ClosePolicy.RESUME
            if resume:
                self.stats.resumes += 1
                continue
            self.stats.reconnects += 1
            self._set_state(ConnectionState.RECONNECTING)
            self._teardown_session()
            self.udp.close()
            if self._new_info is not None:
                # Moved or reallocated: the shard already brought new credentials.
                session.info, self._new_info = self._new_info, None
                self._info_arrived.clear()
            elif self.shard is not None:
                try:
                    session.info = await self.request_voice()
                except (TimeoutError, UsageError) as exc:
                    self.logger.warning("could not get new voice credentials: %s", exc)

    async def _policy_after_close(
        self, code: int | None, session: VoiceSession
    ) -> tuple[ClosePolicy, str]:
        """Decide what to do after the WebSocket closed with ``code``."""
        if self._heartbeat_dead:
            self._heartbeat_dead = False
            policy, reason = ClosePolicy.RESUME, "heartbeat ACKs missed"
        else:
            policy, reason = close_policy(code), describe_close(code)
        if self.shard is not None and (self._awaiting_endpoint or code == CloseCode.DISCONNECTED):
            # 4014 also ends the old session when Discord moves us; an endpoint of
            # null means the voice server is being reallocated. Either way new
            # credentials may follow from the main gateway: wait for them.
            if self._new_info is None:
                self._set_state(ConnectionState.RECONNECTING)
                wait = self.endpoint_timeout if self._awaiting_endpoint else self.move_timeout
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._info_arrived.wait(), wait)
            self._awaiting_endpoint = False
            if self._new_info is None:
                return ClosePolicy.FINAL, reason
        if self._new_info is not None:
            return ClosePolicy.NEW_SESSION, "new voice server credentials"
        if policy is ClosePolicy.RESUME and not session.resumable:
            policy = ClosePolicy.NEW_SESSION
        return policy, reason

    async def _one_websocket(self, resume: bool) -> int | None:
        """Run one WebSocket from connect to close; return the close code."""
        session = self._session
        assert session is not None
        self._set_state(ConnectionState.RESUMING if resume else ConnectionState.CONNECTING)
        try:
            await self.web_socket.connect(voice_url(session.info.endpoint), ssl=self.ssl)
        except OSError as exc:
            self.logger.warning("voice WebSocket connect failed: %s", exc)
            return None
        if not resume:
            self._set_state(ConnectionState.IDENTIFYING)
        try:
            await self.send(session.opening_message(resume=resume))
            async for frame in self.web_socket.frames():
                await self._on_frame(frame)
        except _Reconnect:
            self.web_socket.abort()
        except UsageError:
            # The socket was dropped under us (reconnect(), a move, missed ACKs)
            # while a handler was still sending: that is just a close.
            self.web_socket.abort()
        finally:
            self.web_socket.stop_heartbeat()
        return self.web_socket.close_code

    def _finish(self, code: int | None, reason: str) -> None:
        error: ConnectionClosed = (
            DaveRequired(code, reason) if code == 4017 else ConnectionClosed(code, reason)
        )
        self.udp.close()
        self._teardown_session()
        self._session = None
        self._runner = None
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # retrieved: connect() may have stopped waiting
        self._set_state(ConnectionState.CLOSED)

    def _teardown_session(self) -> None:
        """Forget everything tied to one voice session (keys, DAVE, buffers)."""
        if self.dave is not None:
            self.dave.close()
        self.dave = None
        self.rtp = None
        self.jitters.clear()
        self.ssrcs.clear()
        self.users.clear()
        self._undecrypted.clear()
        self._last_epoch = 0
        self._speaking = SpeakingFlags.NONE
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None
        if self._session is not None:
            self._session.resumable = False
            self._session.ssrc = None

    # -- gateway messages ---------------------------------------------------------------

    async def _on_frame(self, frame: str | bytes) -> None:
        session = self._session
        assert session is not None
        try:
            envelope = session.receive(frame)
        except MalformedMessage as exc:
            self.stats.malformed_messages += 1
            self._diagnose("malformed_message", str(exc))
            return
        self.stats.messages_received += 1
        message = envelope.message
        self._emit(self._on_raw_message, message)
        now = asyncio.get_running_loop().time()
        match message:
            case Hello(heartbeat_interval=interval):
                session.heartbeat_interval = interval / 1000.0
                self.web_socket.start_heartbeat(session.heartbeat_interval, self._beat)
            case HeartbeatAckMessage():
                rtt = session.heartbeats.ack(message, now)
                if rtt is not None:
                    self._emit(self._on_heartbeat, rtt)
            case Ready():
                await self._on_ready_message(message)
            case SessionDescription():
                self._on_session_description(message, now)
            case Resumed():
                self._became_ready(new_session=False)
            case Speaking(user_id=str(user_id), ssrc=ssrc, speaking=flags):
                self._map_ssrc(ssrc, user_id, now)
                self._emit(self._on_speaking, SpeakingEvent(user_id, ssrc, SpeakingFlags(flags)))
            case ClientsConnect(user_ids=user_ids):
                self.users.update(user_ids)
                if self.dave is not None:
                    self.dave.add_users(user_ids)
                for user_id in user_ids:
                    self._emit(self._on_client_connect, ClientConnect(user_id))
            case ClientDisconnectMessage(user_id=user_id):
                self.users.discard(user_id)
                if self.dave is not None:
                    self.dave.remove_user(user_id)
                for ssrc in self.ssrcs.ssrcs_of(user_id):
                    self._drain_jitter(ssrc)
                self.ssrcs.forget_user(user_id)
                self._emit(self._on_client_disconnect, ClientDisconnect(user_id))
            case _:
                if self.dave is not None:
                    self.dave.handle(message, now)
        await self._flush_dave()

    def _beat(self) -> str | bytes | None:
        session = self._session
        if session is None:
            return None
        beat = session.heartbeat(asyncio.get_running_loop().time())
        if session.heartbeats.dead:
            self.logger.warning("%d heartbeats unacknowledged; resuming", session.heartbeats.missed)
            self._heartbeat_dead = True
            self.web_socket.abort()
            return None
        return serialize(beat)

    async def _on_ready_message(self, ready: Ready) -> None:
        session = self._session
        assert session is not None
        session.ssrc = ready.ssrc
        self._set_state(ConnectionState.DISCOVERING)
        try:
            if not self.udp.is_open:
                await self.udp.open(ready.ip, ready.port)
            found = await self.udp.discover(ready.ssrc)
            mode = choose_mode(ready.modes)
        except (OSError, ValueError, TimeoutError, ProtocolError) as exc:
            # ValueError: e.g. an IP that cannot even be encoded for resolution.
            self.logger.warning("voice UDP setup failed: %s", exc)
            self._diagnose("udp_setup_failed", str(exc))
            raise _Reconnect from exc
        self._set_state(ConnectionState.SELECTING_PROTOCOL)
        await self.send(SelectProtocol(address=found.address, port=found.port, mode=mode.value))
        self.udp.start_keepalive()
        self._emit(self._on_connected, None)

    def _on_session_description(self, description: SessionDescription, now: float) -> None:
        session = self._session
        assert session is not None
        try:
            mode = EncryptionMode(description.mode)
        except ValueError:
            self._diagnose("unexpected_message", f"unsupported mode in op 4: {description.mode!r}")
            raise _Reconnect from None
        if session.ssrc is None:
            self._diagnose("unexpected_message", "op 4 before op 2; ignored")
            return
        self.rtp = RtpCrypto(mode, description.secret_key, session.ssrc)
        user_id = self.user_id
        assert user_id is not None
        self.dave = DaveManager(
            user_id,
            self.channel_id,
            max_protocol_version=self.max_dave_protocol_version,
            failure_tolerance=self.dave_failure_tolerance,
        )
        # op 11 may have come before op 4: these users' proposals are expected.
        self.dave.add_users(self.users)
        self.dave.start(description.dave_protocol_version, now)
        session.resumable = True
        # Register our SSRC now, as discord.py does: receivers can then map it
        # before our first packet, and the server never sees audio before op 5.
        self._spawn(self.send(Speaking(speaking=0, ssrc=session.ssrc, delay=0)))
        self._became_ready(new_session=True)

    def _became_ready(self, *, new_session: bool) -> None:
        self._readies += 1
        self._set_state(ConnectionState.READY)
        if not new_session:
            self._emit(self._on_connected, None)
            # A resumed session keeps UDP, key, SSRC and DAVE; only speaking resets.
            self._speaking = SpeakingFlags.NONE
        else:
            self._emit(self._on_ready, None)
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    async def _flush_dave(self) -> None:
        dave = self.dave
        if dave is None:
            return
        out = dave.poll()
        for message in out.send:
            await self.send(message)
        for transition in out.transitions:
            self._emit(self._on_dave_epoch_transition, transition)
        # New keys (a processed commit or welcome, or an executed transition):
        # frames that failed before may decrypt now.
        epoch, self._last_epoch = self._last_epoch, dave.epoch
        if self._undecrypted and (out.transitions or dave.epoch != epoch):
            self._retry_undecrypted(asyncio.get_running_loop().time())
            self._schedule_timer()

    def _flush_dave_soon(self) -> None:
        """Send what DAVE queued from the receive path (op 31 recovery) without blocking it."""
        if self.dave is not None and self.web_socket.is_open:
            self._spawn(self._flush_dave())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task owned by the connection (cancelled by force_close)."""
        task = asyncio.get_running_loop().create_task(self._quietly(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _quietly(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except UsageError:
            pass  # the socket closed before a background send: the close says it all
        except Exception:
            self.logger.exception("background task of the voice connection failed")

    # -- the receive path ---------------------------------------------------------------

    def _on_datagrams(self, batch: list[bytes]) -> None:
        rtp, dave = self.rtp, self.dave
        if rtp is None or dave is None:
            return
        now = asyncio.get_running_loop().time()
        stats = self.stats
        ssrcs = self.ssrcs
        failures_before = dave.stats.recoveries
        for datagram in batch:
            kind = classify(datagram)
            if kind is not DatagramKind.RTP:
                if kind is DatagramKind.RTCP:
                    stats.rtcp_received += 1
                else:
                    stats.other_datagrams += 1
                continue
            stats.packets_received += 1
            try:
                packet = rtp.open(datagram)
            except ProtocolError as exc:
                stats.undecryptable_packets += 1
                self._diagnose("undecryptable_packet", str(exc))
                continue
            header = packet.header
            if header.payload_type != OPUS_PAYLOAD_TYPE:
                stats.other_datagrams += 1
                continue
            stats.packets_decrypted += 1
            # A plain 12-byte header (no CSRCs, no extension) followed by the payload.
            frame = packet.frame()
            user_id = ssrcs.user_of(header.ssrc)
            if user_id is None:
                ssrcs.hold(header.ssrc, frame, now)
                continue
            self._deliver(user_id, header.ssrc, frame, now)
        held = self._undecrypted
        while held and held[0][0] < now - RETRY_WINDOW:
            _, user_id, ssrc, _ = held.popleft()
            self._dave_failed(user_id, ssrc)
        if dave.stats.recoveries != failures_before:
            self._flush_dave_soon()
        self._schedule_timer()

    def _deliver(self, user_id: str | None, ssrc: int, frame: bytes, now: float) -> None:
        dave = self.dave
        assert dave is not None
        payload = frame[12:]
        if user_id is not None:
            opus = dave.decrypt(user_id, payload, now)
        else:
            opus = dave.open_unattributed(payload)
        if opus is None:
            if user_id is not None and is_dave_frame(payload):
                # Perhaps the sender already uses keys of a commit we have not
                # processed yet: retry once the next transition lands.
                held = self._undecrypted
                if len(held) == RETRY_LIMIT:
                    _, old_user, old_ssrc, _ = held.popleft()
                    self._dave_failed(old_user, old_ssrc)
                held.append((now, user_id, ssrc, frame))
            else:
                self._dave_failed(user_id, ssrc)
            return
        self._accept(user_id, ssrc, frame[:12] + opus, now, now)

    def _accept(
        self, user_id: str | None, ssrc: int, frame: bytes, arrived: float, now: float
    ) -> None:
        """Emit a fully decrypted frame and pass it through its SSRC's jitter buffer."""
        audio = AudioFrame(user_id, ssrc, frame, arrived)
        self._emit(self._on_raw_audio_frame, audio)
        jitter = self.jitters.get(ssrc)
        if jitter is None:
            jitter = self.jitters[ssrc] = JitterBuffer(
                capacity=self.jitter_capacity, latency=self.jitter_latency
            )
        self._release(jitter.push(audio.sequence, audio.timestamp, audio, now))

    def _dave_failed(self, user_id: str | None, ssrc: int) -> None:
        self.stats.dave_failures += 1
        self._diagnose("dave_decrypt_failed", "frame could not be DAVE-decrypted", ssrc, user_id)

    def _retry_undecrypted(self, now: float) -> None:
        """Retry frames that failed DAVE decryption before the latest transition."""
        held = list(self._undecrypted)
        self._undecrypted.clear()
        dave = self.dave
        for arrived, user_id, ssrc, frame in held:
            opus = dave.decrypt(user_id, frame[12:], now) if dave is not None else None
            if opus is None or now - arrived > RETRY_WINDOW:
                self._dave_failed(user_id, ssrc)
                continue
            self._accept(user_id, ssrc, frame[:12] + opus, arrived, now)

    def _release(self, released: Iterable[Release[AudioFrame]]) -> None:
        # Gaps are not emitted here: on_audio_frame carries frames only, and a
        # decoder sees a loss from the sequence numbers (see operators.decode_opus).
        for item in released:
            if isinstance(item, JitterPacket):
                self._emit(self._on_audio_frame, item.item)

    def _map_ssrc(self, ssrc: int, user_id: str, now: float) -> None:
        held = self.ssrcs.map(ssrc, user_id)
        if held and self.dave is not None:
            for frame in held:
                self._deliver(user_id, ssrc, frame, now)
            self._schedule_timer()

    def _drain_jitter(self, ssrc: int) -> None:
        """Release what an SSRC's jitter buffer holds (its user left) and forget it."""
        jitter = self.jitters.pop(ssrc, None)
        if jitter is not None:
            self._release(jitter.flush())

    def _schedule_timer(self) -> None:
        deadlines = [d for j in self.jitters.values() if (d := j.next_deadline()) is not None]
        expiry = self.ssrcs.next_expiry()
        if expiry is not None:
            deadlines.append(expiry)
        if not deadlines:
            return
        at = min(deadlines)
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= at:
                return
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = at
        self._timer = loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if self.dave is None:
            return
        now = asyncio.get_running_loop().time()
        for ssrc, frame in self.ssrcs.expire(now):
            # Never mapped in time: attribute to nobody if it can be read without DAVE.
            self.stats.unmapped_expired += 1
            self._deliver(None, ssrc, frame, now)
        for jitter in list(self.jitters.values()):
            self._release(jitter.poll(now))
        self._schedule_timer()

    # -- shard --------------------------------------------------------------------------

    def _watch_shard(self) -> None:
        if self.shard is None or self._voice_updates is not None:
            return
        self._voice_updates = self.shard.voice_updates.subscribe(self._on_voice_update)

    def _on_voice_update(self, update: VoiceUpdate) -> None:
        session = self._session
        if session is None or self._closing:
            return
        if isinstance(update, VoiceStateUpdate):
            if update.user_id != self.user_id or update.guild_id not in (None, self.guild_id):
                return
            if update.channel_id is None:
                self.logger.info("we left the voice channel; closing")
                self.force_close()
                return
            # Moved to another channel (also the DAVE group): credentials follow.
            self.channel_id = update.channel_id
            self.session_id = update.session_id
            return
        if update.guild_id != self.guild_id or self._requesting:
            return
        if update.endpoint is None:
            # The voice server is being reallocated: leave it and wait for the next.
            self.logger.info("voice server endpoint removed; waiting for a new one")
            self._awaiting_endpoint = True
            self.web_socket.abort()
            return
        if update.token == session.info.token and update.endpoint == session.info.endpoint:
            return
        # Moved or reallocated: a new voice session with the new credentials.
        self.token, self.endpoint = update.token, update.endpoint
        self._new_info = VoiceServerInfo(
            guild_id=self.guild_id,
            channel_id=self.channel_id,
            user_id=session.info.user_id,
            session_id=self.session_id or session.info.session_id,
            token=update.token,
            endpoint=update.endpoint,
        )
        self._info_arrived.set()
        self.web_socket.abort()

    # -- helpers ------------------------------------------------------------------------

    def _emit(self, stream: EventStream[T], value: T) -> None:
        stream.on_next(value)

    def _set_state(self, state: ConnectionState) -> None:
        if self._state.value is not state:
            self._state.on_next(state)

    def _diagnose(
        self, kind: str, detail: str, ssrc: int | None = None, user_id: str | None = None
    ) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("%s: %s (ssrc=%s user=%s)", kind, detail, ssrc, user_id)
        self._emit(self._on_diagnostic, Diagnostic(kind, detail, ssrc, user_id))
