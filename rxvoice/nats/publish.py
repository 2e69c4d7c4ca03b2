"""Publishing a connection's frames and lifecycle events to NATS JetStream.

The receive path never waits for the broker: a frame is serialised and put in
a bounded window in the emitting call, and one task per publisher hands the
window to nats-py; acknowledgements come back on a reply inbox. When the
window is full (the broker slow, away or restarting) new frames are dropped
and counted, never queued without bound; reconnecting is nats-py's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable

from rxvoice.errors import RxVoiceError, UsageError
from rxvoice.events import (
    AudioFrame,
    ConnectionState,
    SpeakingEvent,
)
from rxvoice.nats.layout import AUDIO_SUBJECT, CONTROL_SUBJECT, SubjectTemplate
from rxvoice.nats.wire import (
    ControlEvent,
    ControlMessage,
    SessionStart,
    SsrcChange,
    StateChange,
    VoicePacket,
)

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from rxvoice.connection import Connection
    from rxvoice.protocol.dave import DaveManager

__all__ = [
    "ConnectionPublisher",
    "ControlPublisher",
    "Publisher",
    "PublishStats",
    "VoiceSession",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 2048
DEFAULT_ACK_TIMEOUT = 5.0


class VoiceSession(Protocol):
    """What a publisher reads from a connection for each frame (a Connection has it)."""

    @property
    def guild_id(self) -> str:
        """The guild."""
        ...

    @property
    def channel_id(self) -> str:
        """The voice channel (it changes when the bot is moved)."""
        ...

    @property
    def dave(self) -> DaveManager | None:
        """The DAVE session, for its epoch and protocol version."""
        ...


@dataclass(slots=True)
class PublishStats:
    """What a publisher counted.

    Every offered message ends in exactly one of ``acked``, ``dropped``,
    ``errors`` or ``timeouts`` (until then it is :attr:`in_flight`).

    Attributes:
        offered: Messages given to the publisher (frames, or control events).
        published: Handed to the NATS client (sent, or buffered by it while
            reconnecting).
        acked: Stored by JetStream (a positive acknowledgement came back).
        dropped: Never handed over: the in-flight window was full, or the
            publisher was closed.
        errors: Refused: an error acknowledgement, no stream for the subject,
            the client refused the message, or it could not be serialised.
        timeouts: Handed over but not acknowledged within ``ack_timeout``
            (for example lost with a broker that went away); JetStream may
            still have stored some of them.
    """

    offered: int = 0
    published: int = 0
    acked: int = 0
    dropped: int = 0
    errors: int = 0
    timeouts: int = 0

    @property
    def in_flight(self) -> int:
        """Messages waiting to be sent or acknowledged."""
        return self.offered - self.acked - self.dropped - self.errors - self.timeouts


def _nats_client(client: NatsClient | JetStreamContext) -> NatsClient:
    """The core NATS client of ``client`` (itself, or the one under a JetStream context)."""
    from nats.js import JetStreamContext

    if isinstance(client, JetStreamContext):
        return client._nc  # nats-py has no public accessor for a context's client
    return client


def _is_ack(data: bytes) -> bool:
    """Whether a JetStream reply is a PubAck (``{"stream": ..., "seq": ...}``), not an error."""
    if b'"error"' not in data:
        return True  # the common case, without parsing: no error key can be there
    try:  # "error" may also be a stream's name: only the key makes an error
        reply = json.loads(data)
    except ValueError:  # UnicodeDecodeError included
        return False
    return isinstance(reply, dict) and "error" not in reply


class _Window:
    """A bounded window of messages on their way to JetStream.

    :meth:`offer` never waits: it queues the message or counts it dropped.
    One task publishes the queue with a reply subject per message and counts
    the acknowledgements (one timer expires the overdue ones).
    """

    def __init__(
        self,
        client: NatsClient | JetStreamContext,
        stats: PublishStats,
        max_in_flight: int,
        ack_timeout: float,
    ) -> None:
        if max_in_flight < 1:
            raise UsageError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if ack_timeout <= 0:
            raise UsageError(f"ack_timeout must be > 0, got {ack_timeout}")
        self._nc = _nats_client(client)
        self.stats = stats
        self._max = max_in_flight
        self._ack_timeout = ack_timeout
        self._queue: deque[tuple[str, bytes]] = deque()
        self._awaiting: dict[int, float] = {}  # reply token -> deadline, oldest first
        self._token = 0
        self._prefix = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle: list[asyncio.Future[None]] = []
        self._closed = False
        self.last_error = ""

    def start(self) -> None:
        """Start publishing on the running loop (idempotent).

        Raises:
            UsageError: No asyncio loop runs in this thread.
        """
        if self._task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise UsageError("a NATS publisher starts inside a running asyncio loop") from None
        self._loop = loop
        self._thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="rxvoice-nats-publish")

    def offer(self, subject: str, payload: bytes) -> None:
        """Queue a message, or count it dropped when the window is full; never waits."""
        if threading.get_ident() != self._thread:
            loop = self._loop
            if loop is None or loop.is_closed():
                self.stats.offered += 1
                self.stats.dropped += 1
                return
            loop.call_soon_threadsafe(self.offer, subject, payload)
            return
        stats = self.stats
        stats.offered += 1
        if self._closed or len(self._queue) + len(self._awaiting) >= self._max:
            stats.dropped += 1
            return
        self._queue.append((subject, payload))
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    def refuse(self, reason: str) -> None:
        """Count an offered message that could not even be built."""
        self.stats.offered += 1
        self.stats.errors += 1
        self._error(reason)

    async def _run(self) -> None:
        try:
            await self._publish_queue()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # e.g. the client was closed before we could subscribe
            self._error(f"the publisher stopped: {exc!r}")
            self._closed = True
            self.stats.dropped += len(self._queue)
            self._queue.clear()
            self._settled()

    async def _publish_queue(self) -> None:
        nc = self._nc
        wake = self._wake
        assert wake is not None and self._loop is not None
        inbox = nc.new_inbox()
        self._prefix = inbox + "."
        subscription = await nc.subscribe(inbox + ".*", cb=self._on_reply)
        queue, awaiting, stats = self._queue, self._awaiting, self.stats
        loop = self._loop
        try:
            while True:
                if not queue:
                    wake.clear()
                    await wake.wait()
                while queue:
                    subject, payload = queue.popleft()
                    self._token += 1
                    token = self._token
                    try:
                        await nc.publish(subject, payload, reply=self._prefix + str(token))
                    except Exception as exc:  # closed, reconnect buffer full, bad subject…
                        stats.errors += 1
                        self._error(f"publish failed: {exc!r}")
                        self._settled()
                        continue
                    stats.published += 1
                    awaiting[token] = loop.time() + self._ack_timeout
                    if self._timer is None:
                        self._timer = loop.call_at(awaiting[token], self._expire)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _on_reply(self, msg: Msg) -> None:
        try:
            token = int(msg.subject[len(self._prefix) :])
        except ValueError:
            return
        if self._awaiting.pop(token, None) is None:
            return  # acknowledged after its timeout: already counted
        headers = msg.headers
        if headers and headers.get("Status") == "503":
            self.stats.errors += 1
            self._error("no JetStream stream stores this subject (503 no responders)")
        elif not _is_ack(msg.data):
            self.stats.errors += 1
            self._error(f"JetStream refused a message: {msg.data[:200]!r}")
        else:
            self.stats.acked += 1
        self._settled()

    def _expire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        awaiting = self._awaiting
        expired = 0
        while awaiting:
            token = next(iter(awaiting))
            deadline = awaiting[token]
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire)
                break
            del awaiting[token]
            expired += 1
        if expired:
            self.stats.timeouts += expired
            self._error(f"{expired} message(s) not acknowledged in {self._ack_timeout:g} s")
            self._settled()

    def _error(self, reason: str) -> None:
        if reason != self.last_error:
            logger.warning("NATS publisher: %s", reason)
        self.last_error = reason

    def _settled(self) -> None:
        if self._idle and not self._queue and not self._awaiting:
            for future in self._idle:
                if not future.done():
                    future.set_result(None)
            self._idle.clear()

    async def drain(self) -> None:
        """Wait until every queued message is acknowledged, refused or timed out."""
        if self._task is None or (not self._queue and not self._awaiting):
            return
        future = asyncio.get_running_loop().create_future()
        self._idle.append(future)
        await future

    async def aclose(self, *, drain: bool = True) -> None:
        """Stop: optionally drain first; what is still queued is counted dropped."""
        if drain and not self._closed:
            await self.drain()
        self._closed = True
        self.stats.dropped += len(self._queue)
        self._queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.stats.timeouts += len(self._awaiting)
        self._awaiting.clear()
        self._settled()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Publisher:
    """The sink operator of :func:`rxvoice.nats.publish`: frames to JetStream.

    Pipe frames into it and subscribe: ``frames.pipe(publisher).subscribe()``.
    The resulting observable emits :attr:`stats` once, when the source has
    completed and every frame is settled, then completes; an error of the
    source is passed on. A publisher may be piped several times; the
    subscriptions share one window and one :attr:`stats`.

    Args:
        client: A JetStream context (``nc.jetstream()``) or the NATS client.
        subject: A template with ``{guild_id}``, ``{channel_id}``, ``{user_id}``
            (``unknown`` for an unattributed frame) and ``{ssrc}``.
        connection: Where guild, channel and the DAVE epoch are read for each
            frame (a :class:`rxvoice.Connection`, or any :class:`VoiceSession`).
        guild_id: The guild, without a ``connection``.
        channel_id: The voice channel, without a ``connection``.
        max_in_flight: The most frames queued or awaiting acknowledgement;
            beyond it new frames are dropped (counted).
        ack_timeout: Seconds to wait for an acknowledgement before counting a
            frame as timed out.

    Raises:
        UsageError: Neither a connection nor both ids are given, the template
            is not a valid subject, or a bound is out of range.
    """

    def __init__(
        self,
        client: NatsClient | JetStreamContext,
        subject: str = AUDIO_SUBJECT,
        *,
        connection: VoiceSession | None = None,
        guild_id: str | int | None = None,
        channel_id: str | int | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
    ) -> None:
        if connection is None and (guild_id is None or channel_id is None):
            raise UsageError("publish needs connection=, or both guild_id= and channel_id=")
        self._connection = connection
        self._guild_id = str(guild_id) if guild_id is not None else ""
        self._channel_id = str(channel_id) if channel_id is not None else ""
        self._subject = SubjectTemplate(subject, ("guild_id", "channel_id", "user_id", "ssrc"))
        self.stats = PublishStats()
        self._window = _Window(client, self.stats, max_in_flight, ack_timeout)
        self._wall_offset: float | None = None

    def __repr__(self) -> str:
        return f"Publisher(subject={self._subject.template!r}, stats={self.stats})"

    @property
    def last_error(self) -> str:
        """The most recent problem (also logged once per distinct message)."""
        return self._window.last_error

    def __call__(self, source: Observable[AudioFrame]) -> Observable[PublishStats]:
        """Subscribe to ``source`` and publish its frames (the operator)."""

        def subscribe(
            observer: abc.ObserverBase[PublishStats], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            self._window.start()
            loop = asyncio.get_running_loop()
            if self._wall_offset is None:
                # Frames carry the receiving loop's monotonic time; the wire carries
                # the wall clock, which other machines share.
                self._wall_offset = time.time() - loop.time()
            done: list[asyncio.Task[None]] = []

            async def settle() -> None:
                await self._window.drain()
                observer.on_next(self.stats)
                observer.on_completed()

            def on_completed() -> None:
                # After the frames the source sent (from whatever thread) are queued.
                loop.call_soon_threadsafe(lambda: done.append(loop.create_task(settle())))

            subscription = source.subscribe(
                self._publish, observer.on_error, on_completed, scheduler=scheduler
            )

            def dispose() -> None:
                subscription.dispose()
                for task in done:
                    task.cancel()

            return Disposable(dispose)

        return Observable(subscribe)

    def _publish(self, frame: AudioFrame) -> None:
        connection = self._connection
        epoch = version = 0
        if connection is not None:
            guild, channel = connection.guild_id, connection.channel_id
            dave = connection.dave
            if dave is not None:
                epoch, version = dave.epoch, dave.protocol_version
        else:
            guild, channel = self._guild_id, self._channel_id
        user = frame.user_id
        try:
            subject = self._subject.render(
                guild_id=guild,
                channel_id=channel,
                user_id=user if user is not None else "unknown",
                ssrc=frame.ssrc,
            )
            payload = VoicePacket(
                guild,
                channel,
                user,
                frame.received_at + (self._wall_offset or 0.0),
                epoch,
                version,
                frame.frame,
            ).serialize()
        except RxVoiceError as exc:
            self._window.refuse(f"frame not publishable: {exc}")
            return
        self._window.offer(subject, payload)

    async def drain(self) -> None:
        """Wait until every frame offered so far is acknowledged, refused or timed out."""
        await self._window.drain()

    async def aclose(self, *, drain: bool = True) -> None:
        """Stop publishing (after draining, by default); later frames are dropped."""
        await self._window.aclose(drain=drain)


class ControlPublisher:
    """Publishes a connection's lifecycle events as JSON on the control subject.

    Subscribes at once to ``on_speaking``, ``on_client_connect``,
    ``on_client_disconnect``, ``on_dave_epoch_transition``, ``on_ready``,
    ``on_disconnected`` and ``state``, and derives :class:`SsrcChange` from
    the speaking events (see :mod:`rxvoice.nats.wire` for the messages).

    Args:
        client: A JetStream context or the NATS client.
        connection: The connection to follow.
        subject: A template with ``{guild_id}``, ``{channel_id}`` and ``{type}``.
        max_in_flight: The most events queued or awaiting acknowledgement.
        ack_timeout: Seconds to wait for an acknowledgement.
    """

    def __init__(
        self,
        client: NatsClient | JetStreamContext,
        connection: Connection,
        subject: str = CONTROL_SUBJECT,
        *,
        max_in_flight: int = 256,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
    ) -> None:
        self._connection = connection
        self._subject = SubjectTemplate(subject, ("guild_id", "channel_id", "type"))
        self.stats = PublishStats()
        self._window = _Window(client, self.stats, max_in_flight, ack_timeout)
        self._window.start()
        self._ssrcs: dict[str, int] = {}
        conn = connection
        emit: Callable[[Any], None] = self.publish
        self._subscription = CompositeDisposable(
            conn.on_speaking.subscribe(self._on_speaking),
            conn.on_client_connect.subscribe(emit),
            conn.on_client_disconnect.subscribe(emit),
            conn.on_dave_epoch_transition.subscribe(emit),
            conn.on_disconnected.subscribe(emit),
            conn.on_ready.subscribe(lambda _: emit(SessionStart(conn.user_id, conn.ssrc))),
            conn.state.subscribe(self._on_state),
        )

    def _on_speaking(self, event: SpeakingEvent) -> None:
        previous = self._ssrcs.get(event.user_id)
        if previous != event.ssrc:
            self._ssrcs[event.user_id] = event.ssrc
            self.publish(SsrcChange(event.user_id, event.ssrc, previous))
        self.publish(event)

    def _on_state(self, state: ConnectionState) -> None:
        self.publish(StateChange(state))

    def publish(self, event: ControlEvent) -> None:
        """Publish one event of the connection (never waits)."""
        conn = self._connection
        message = ControlMessage(conn.guild_id, conn.channel_id, time.time(), event)
        try:
            subject = self._subject.render(
                guild_id=conn.guild_id, channel_id=conn.channel_id, type=message.type
            )
            payload = message.serialize()
        except RxVoiceError as exc:
            self._window.refuse(f"event not publishable: {exc}")
            return
        self._window.offer(subject, payload)

    def dispose(self) -> None:
        """Stop following the connection."""
        self._subscription.dispose()

    async def drain(self) -> None:
        """Wait until every event offered so far is settled."""
        await self._window.drain()

    async def aclose(self, *, drain: bool = True) -> None:
        """Stop following the connection and publishing."""
        self.dispose()
        await self._window.aclose(drain=drain)


class ConnectionPublisher:
    """A connection's audio and lifecycle events on NATS (from ``publish_connection``).

    Attributes:
        audio: The frames' :class:`Publisher` (``audio.stats``).
        control: The events' :class:`ControlPublisher` (``control.stats``).
    """

    def __init__(self, audio: Publisher, control: ControlPublisher, source: Observable[Any]):
        self.audio = audio
        self.control = control
        self._subscription = source.pipe(audio).subscribe()

    def __repr__(self) -> str:
        return f"ConnectionPublisher(audio={self.audio.stats}, control={self.control.stats})"

    def dispose(self) -> None:
        """Stop following the connection (what is in flight still settles)."""
        self._subscription.dispose()
        self.control.dispose()

    async def drain(self) -> None:
        """Wait until everything offered so far is settled."""
        await asyncio.gather(self.audio.drain(), self.control.drain())

    async def aclose(self, *, drain: bool = True) -> None:
        """Stop following the connection and close both publishers."""
        self.dispose()
        await asyncio.gather(self.audio.aclose(drain=drain), self.control.aclose(drain=drain))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
