"""One voice session: from Identify to its end, resumes included.

A :class:`Session` owns everything that lives and dies with one voice session:
the gateway bookkeeping (:class:`~rxvoice.protocol.session.VoiceSession`), the
transport keys (``rtp``), the DAVE session, the receive path
(:class:`~rxvoice.protocol.receiver.VoiceReceiver`) and its timer, the users in
the call and the session's background tasks. Ending a session is
:meth:`Session.close` and dropping the object.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from rxvoice.errors import MalformedMessage, ProtocolError, UsageError
from rxvoice.events import (
    AudioFrame,
    ClientConnect,
    ClientDisconnect,
    ConnectionState,
    DiagnosticKind,
    SpeakingEvent,
    SpeakingFlags,
)
from rxvoice.protocol.crypto import EncryptionMode, RtpCrypto, choose_mode
from rxvoice.protocol.dave import DaveManager
from rxvoice.protocol.gateway import ClientDisconnect as ClientDisconnectMessage
from rxvoice.protocol.gateway import (
    ClientsConnect,
    GatewayMessage,
    HeartbeatAck,
    Hello,
    Ready,
    Resumed,
    SelectProtocol,
    SessionDescription,
    Speaking,
    serialize,
)
from rxvoice.protocol.receiver import Received, VoiceReceiver
from rxvoice.protocol.session import VoiceServerInfo, VoiceSession

if TYPE_CHECKING:
    from rxvoice._voice.runner import Run
    from rxvoice.connection import Connection

__all__ = ["Reconnect", "Session"]

_NEVER = float("inf")


class Reconnect(Exception):
    """Internal: the current WebSocket must be replaced."""


class Session:
    """The state and work of one voice session (see the module docstring).

    Args:
        conn: The connection: configuration, transports and the streams to emit on.
        run: The run this session belongs to (it learns when the session is ready).
        info: The session's credentials.
    """

    def __init__(self, conn: Connection, run: Run, info: VoiceServerInfo) -> None:
        self.conn, self.run = conn, run
        self.gateway = VoiceSession(
            info,
            max_dave_protocol_version=conn.max_dave_protocol_version,
            max_missed_heartbeats=conn.max_missed_heartbeats,
        )
        self.rtp: RtpCrypto | None = None
        self.dave: DaveManager | None = None
        # Created now: op 5 may map SSRCs before op 4 brings the keys.
        self.receiver = VoiceReceiver(
            latency=conn.jitter_latency,
            capacity=conn.jitter_capacity,
            hold_time=conn.unmapped_hold,
            stats=conn.stats,
        )
        self.users: set[str] = set()  # who else is in the call (op 11 / op 13)
        self.speaking = SpeakingFlags.NONE
        # Where the handshake is: op 2 is taken once, op 4 once after our op 1,
        # op 9 only in answer to our op 7 (the discord.js networking states).
        self.selected = False  # op 1 (Select Protocol) sent
        self.resuming = False  # op 7 (Resume) sent on the current WebSocket
        self._tasks: set[asyncio.Task[None]] = set()
        self._dave_flush: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _NEVER

    def begin_media(self, rtp: RtpCrypto, dave: DaveManager) -> None:
        """Use the keys of the session description: send and receive audio from now on."""
        self.rtp, self.dave = rtp, dave
        self.receiver.set_keys(rtp.cipher, dave)

    def close(self, *, flush: bool = False) -> list[asyncio.Task[None]]:
        """End the session: cancel its tasks and timer, drop the DAVE session.

        Args:
            flush: First emit what the receiver holds (frames waiting behind a
                loss go out; frames waiting for DAVE keys count as failures).
                Not from ``force_close``, which may run in a signal handler.

        Returns:
            The tasks cancelled (the caller may await their end).
        """
        if flush:
            self._deliver(self._receiver().flush(asyncio.get_running_loop().time()))
        cancelled = [task for task in self._tasks if not task.done()]
        for task in cancelled:
            task.cancel()
        self._tasks.clear()
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, _NEVER
        if self.dave is not None:
            self.dave.close()
        return cancelled

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` as a task of this session (cancelled when it ends)."""
        task = asyncio.get_running_loop().create_task(self._quietly(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Cancelled before it started, ``work`` was never awaited: close it quietly.
        task.add_done_callback(lambda _: work.close())
        return task

    async def _quietly(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except UsageError:
            pass  # the socket closed before a background send: the close says it all
        except Exception:
            self.conn.logger.exception("background task of the voice connection failed")

    # -- the receive path ---------------------------------------------------------------

    def on_datagrams(self, batch: list[bytes]) -> None:
        """Datagrams from the UDP socket: through the receiver, then to the streams."""
        conn = self.conn
        self._deliver(self._receiver().receive(batch, asyncio.get_running_loop().time()))
        dave = self.dave
        if dave is not None and dave.has_output:
            # Failures past the tolerance re-initialised DAVE (op 31): send it
            # from a task, not from the receive path.
            flush = self._dave_flush
            if (flush is None or flush.done()) and conn.web_socket.is_open:
                self._dave_flush = self.spawn(self.flush_dave())
        self._arm()

    def _receiver(self) -> VoiceReceiver:
        """The receiver, told if anyone wants diagnostics and raw frames (else none are made)."""
        receiver = self.receiver
        receiver.diagnose = bool(self.conn._on_diagnostic.observers)
        receiver.keep_raw = bool(self.conn._on_raw_audio_frame.observers)
        return receiver

    def _deliver(self, received: Received) -> None:
        """Emit what the receiver produced (nothing is emitted to a stream nobody watches)."""
        conn = self.conn
        if received.raw:
            conn._on_raw_audio_frame.on_next_all(received.raw)
        ordered = received.ordered
        if ordered and (conn._on_audio_frame.observers or conn._on_audio_gap.observers):
            frames = [item for item in ordered if isinstance(item, AudioFrame)]
            if len(frames) == len(ordered):
                conn._on_audio_frame.on_next_all(frames)
            else:  # gap markers go on their own stream, each where it falls among the frames
                for item in ordered:
                    if isinstance(item, AudioFrame):
                        conn._on_audio_frame.on_next(item)
                    else:
                        conn._on_audio_gap.on_next(item)
        if received.diagnostics:
            conn._on_diagnostic.on_next_all(received.diagnostics)

    def _arm(self) -> None:
        """One timer for the receiver, at its next deadline."""
        at = self.receiver.next_deadline()
        if at is None or at >= self._timer_at or self.run.session is not self:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        at, self._timer, self._timer_at = self._timer_at, None, _NEVER
        # The loop may run a timer a clock tick early: it is due all the same.
        self._deliver(self._receiver().poll(max(asyncio.get_running_loop().time(), at)))
        self._arm()

    # -- gateway messages ---------------------------------------------------------------

    def opening_message(self, *, resume: bool) -> GatewayMessage:
        """The first message on a new WebSocket (Resume or Identify); see ``VoiceSession``."""
        message = self.gateway.opening_message(resume=resume)
        self.resuming = resume
        return message

    async def on_frame(self, frame: str | bytes) -> None:
        """Handle one frame of the voice WebSocket.

        Nothing slow runs here (IP discovery is a task of its own), and a
        message that cannot be used is counted and reported, never raised.

        Raises:
            Reconnect: The WebSocket must be replaced (a bad setup).
        """
        conn = self.conn
        try:
            envelope = self.gateway.receive(frame)
        except MalformedMessage as exc:
            conn.stats.malformed_messages += 1
            conn._diagnose(DiagnosticKind.MALFORMED_MESSAGE, str(exc))
            return
        conn.stats.messages_received += 1
        message = envelope.message
        conn._on_raw_message.on_next(message)
        try:
            self._handle(message, asyncio.get_running_loop().time())
        except Reconnect:
            raise
        except Exception as exc:
            # A bug, or a library refusing what the server sent: one message
            # never ends the call.
            conn.stats.failed_messages += 1
            conn.logger.exception("voice gateway op %s could not be handled", message.op)
            detail = f"op {message.op} could not be handled ({type(exc).__name__}); ignored"
            conn._diagnose(DiagnosticKind.UNEXPECTED_MESSAGE, detail)
        await self.flush_dave()

    def _handle(self, message: GatewayMessage, now: float) -> None:
        conn, gateway = self.conn, self.gateway
        match message:
            case Hello(heartbeat_interval=interval):
                gateway.heartbeat_interval = interval / 1000.0
                conn.web_socket.start_heartbeat(gateway.heartbeat_interval, self.beat)
            case HeartbeatAck():
                rtt = gateway.heartbeats.ack(message, now)
                if rtt is not None:
                    conn._on_heartbeat.on_next(rtt)
            case Ready():
                if gateway.ssrc is not None:
                    self._unexpected(f"op 2 again (ssrc {message.ssrc}); we keep {gateway.ssrc}")
                    return
                gateway.ssrc = message.ssrc
                self.spawn(self._set_up_media(message))
            case SessionDescription():
                self._on_session_description(message, now)
            case Resumed():
                if not self.resuming:
                    self._unexpected("op 9 without a resume")
                    return
                self.resuming = False
                self.speaking = SpeakingFlags.NONE  # a resume keeps all but that
                self.run.became_ready(new_session=False)
            case Speaking(user_id=str(user_id), ssrc=ssrc, speaking=flags):
                self._deliver(self._receiver().map(ssrc, user_id, now))
                self._arm()
                conn._on_speaking.on_next(SpeakingEvent(user_id, ssrc, SpeakingFlags(flags)))
            case ClientsConnect(user_ids=user_ids):
                self.users.update(user_ids)
                if self.dave is not None:
                    self.dave.add_users(user_ids)
                for user_id in user_ids:
                    conn._on_client_connect.on_next(ClientConnect(user_id))
            case ClientDisconnectMessage(user_id=user_id):
                self.users.discard(user_id)
                if self.dave is not None:
                    self.dave.remove_user(user_id)
                self._deliver(self._receiver().forget_user(user_id))
                conn._on_client_disconnect.on_next(ClientDisconnect(user_id))
            case _:
                if self.dave is not None:
                    self.dave.handle(message, now)

    def _unexpected(self, detail: str) -> None:
        """A well-formed message at the wrong time: reported, and the state left as it was."""
        self.conn.stats.unexpected_messages += 1
        self.conn._diagnose(DiagnosticKind.UNEXPECTED_MESSAGE, f"{detail}; ignored")

    def beat(self) -> str | bytes | None:
        """The next heartbeat to send, or ``None`` after too many missed ACKs (then it resumes)."""
        gateway = self.gateway
        beat = gateway.heartbeat(asyncio.get_running_loop().time())
        if gateway.heartbeats.dead:
            self.conn.logger.warning(
                "%d heartbeats unacknowledged; resuming", gateway.heartbeats.missed
            )
            self.run.close_reason = "heartbeat ACKs missed"
            self.conn.web_socket.abort()
            return None
        return serialize(beat)

    async def flush_dave(self) -> None:
        """Send what DAVE queued, report its transitions, open frames its new keys unlock."""
        dave = self.dave
        if dave is None:
            return
        conn = self.conn
        out = dave.poll()
        for message in out.send:
            await conn.send(message)
        for transition in out.transitions:
            conn._on_dave_epoch_transition.on_next(transition)
        if self.run.session is self:
            self._deliver(self._receiver().poll(asyncio.get_running_loop().time()))
            self._arm()

    async def _set_up_media(self, ready: Ready) -> None:
        """After Ready: the UDP socket, IP discovery, then Select Protocol (a session task)."""
        conn, udp = self.conn, self.conn.udp
        self.run.set_state(ConnectionState.DISCOVERING)
        try:
            if not udp.is_open:
                await udp.open(ready.ip, ready.port)
            found = await udp.discover(ready.ssrc)
            mode = choose_mode(ready.modes)
        except (OSError, ValueError, TimeoutError, ProtocolError) as exc:
            # ValueError: e.g. an IP that cannot even be encoded for resolution.
            conn.logger.warning("voice UDP setup failed: %s", exc)
            conn._diagnose(DiagnosticKind.UDP_SETUP_FAILED, str(exc))
            self.run.close_reason = f"voice UDP setup failed: {exc}"
            conn.web_socket.abort()
            return
        self.run.set_state(ConnectionState.SELECTING_PROTOCOL)
        udp.start_keepalive(conn.keepalive_interval)
        conn._on_connected.on_next(None)
        self.selected = True  # op 4 may be handled before this send returns
        await conn.send(SelectProtocol(address=found.address, port=found.port, mode=mode.value))

    def _on_session_description(self, description: SessionDescription, now: float) -> None:
        conn = self.conn
        ssrc = self.gateway.ssrc
        if self.rtp is not None:
            # A repeat (a replay after a resume, a confused server): the keys and
            # the DAVE group we have are the ones our peers use.
            self._unexpected("op 4 again")
            return
        if ssrc is None or not self.selected:
            self._unexpected("op 4 before our op 1")
            return
        try:
            mode = EncryptionMode(description.mode)
        except ValueError:
            detail = f"unsupported mode in op 4: {description.mode!r}"
            conn._diagnose(DiagnosticKind.UNEXPECTED_MESSAGE, detail)
            raise Reconnect from None
        user_id = conn.user_id
        assert user_id is not None
        dave = DaveManager(
            user_id,
            conn.channel_id,
            max_protocol_version=conn.max_dave_protocol_version,
            failure_tolerance=conn.dave_failure_tolerance,
        )
        # op 11 may have come before op 4: these users' proposals are expected.
        dave.add_users(self.users)
        dave.start(description.dave_protocol_version, now)
        self.begin_media(RtpCrypto(mode, description.secret_key, ssrc), dave)
        self.gateway.resumable = True
        # Register our SSRC now, as discord.py does: receivers can then map it
        # before our first packet, and the server never sees audio before op 5.
        self.spawn(conn.send(Speaking(speaking=0, ssrc=ssrc, delay=0)))
        self.run.became_ready(new_session=True)
