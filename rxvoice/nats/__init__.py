"""Voice streams across processes on NATS JetStream (extra ``rxvoice[nats]``, nats-py).

A bot process publishes what its connections receive; worker processes, on
other machines if need be, read it back as the same observables and compose
the same operators::

    import nats
    from rxvoice import nats as vnats, operators as vops

    # in the bot
    js = (await nats.connect(url)).jetstream()
    await vnats.ensure_stream(js)
    conn.on_audio_frame.pipe(
        vnats.publish(js, "voice.{guild_id}.{user_id}", connection=conn)
    ).subscribe()

    # in a worker
    vnats.frames(js, "voice.*.*", durable="transcriber").pipe(
        vops.decode_opus(), vops.resample(16_000), ...
    ).subscribe(...)

:func:`publish_connection` does the first part for a whole connection, its
lifecycle events (speaking, join, leave, SSRC changes, new sessions, states,
DAVE transitions) included. The binary frame layout and the JSON control
layout are in :mod:`rxvoice.nats.wire`; subjects and the stream in
:mod:`rxvoice.nats.layout`; docs/nats.md has the picture.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from rxvoice.nats.consume import consume, to_frames
from rxvoice.nats.layout import (
    AUDIO_SUBJECT,
    CONTROL_SUBJECT,
    STREAM,
    ensure_stream,
    partition_subjects,
    stream_config,
)
from rxvoice.nats.publish import (
    DEFAULT_ACK_TIMEOUT,
    DEFAULT_MAX_IN_FLIGHT,
    ConnectionPublisher,
    ControlPublisher,
    Publisher,
    PublishStats,
    VoiceSession,
)
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
    from nats.js import JetStreamContext
    from reactivex import Observable

    from rxvoice.connection import Connection
    from rxvoice.events import AudioFrame, Diagnostic

__all__ = [
    "AUDIO_SUBJECT",
    "CONTROL_SUBJECT",
    "STREAM",
    "ConnectionPublisher",
    "ControlEvent",
    "ControlMessage",
    "ControlPublisher",
    "PublishStats",
    "Publisher",
    "SessionStart",
    "SsrcChange",
    "StateChange",
    "VoicePacket",
    "VoiceSession",
    "control_events",
    "ensure_stream",
    "frames",
    "packets",
    "partition_subjects",
    "publish",
    "publish_connection",
    "stream_config",
    "to_frames",
]


def publish(
    client: NatsClient | JetStreamContext,
    subject: str = AUDIO_SUBJECT,
    *,
    connection: VoiceSession | None = None,
    guild_id: str | int | None = None,
    channel_id: str | int | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ack_timeout: float = DEFAULT_ACK_TIMEOUT,
) -> Publisher:
    """A sink operator that publishes each frame to JetStream, never blocking the receive path.

    Each :class:`~rxvoice.events.AudioFrame` becomes one message on
    ``subject`` in the binary layout of :class:`~rxvoice.nats.wire.VoicePacket`
    (guild, channel, user, SSRC, sequence, RTP timestamp, arrival time, DAVE
    epoch, Opus). Publishing happens in a task: the emitting call only
    serialises the frame and queues it (a few microseconds). At most
    ``max_in_flight`` frames wait to be sent or acknowledged; beyond that,
    while the broker is slow or away, new frames are dropped and counted in
    :attr:`Publisher.stats` (``offered``, ``published``, ``acked``,
    ``dropped``, ``errors``, ``timeouts``). nats-py reconnects by itself;
    publishing resumes when it has.

    The frame's ``received_at`` (the receiving loop's monotonic clock) is
    written as wall-clock time, which machines share.

    Guild, channel and DAVE epoch are not in a frame: they come from
    ``connection`` (read per frame, so a move is followed) or are given.

    Example:
        >>> publisher = vnats.publish(js, "voice.{guild_id}.{user_id}", connection=conn)
        >>> conn.on_audio_frame.pipe(publisher).subscribe()
        >>> publisher.stats.dropped   # frames the broker could not take in time

    Args:
        client: A JetStream context (``nc.jetstream()``) or the NATS client.
        subject: A template with ``{guild_id}``, ``{channel_id}``,
            ``{user_id}`` (``unknown`` when not attributed) and ``{ssrc}``;
            a stream must store it (see :func:`ensure_stream`).
        connection: A :class:`rxvoice.Connection` (or any :class:`VoiceSession`).
        guild_id: The guild, when there is no ``connection``.
        channel_id: The channel, when there is no ``connection``.
        max_in_flight: The window: frames queued or awaiting acknowledgement.
        ack_timeout: Seconds before an unacknowledged frame counts as timed out.

    Returns:
        A :class:`Publisher`: pipe frames into it and subscribe; the result
        emits the final :class:`PublishStats` when the source completes and
        everything is settled.

    Raises:
        UsageError: Neither ``connection`` nor both ids, a bad template, or a
            bound out of range.
    """
    return Publisher(
        client,
        subject,
        connection=connection,
        guild_id=guild_id,
        channel_id=channel_id,
        max_in_flight=max_in_flight,
        ack_timeout=ack_timeout,
    )


def publish_connection(
    client: NatsClient | JetStreamContext,
    connection: Connection,
    subject: str = AUDIO_SUBJECT,
    *,
    control: str = CONTROL_SUBJECT,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ack_timeout: float = DEFAULT_ACK_TIMEOUT,
) -> ConnectionPublisher:
    """Publish a connection's audio frames and its lifecycle events, from now on.

    Frames go as :func:`publish` sends them; speaking, join, leave, SSRC
    changes, new sessions, state changes, disconnections and DAVE epoch
    transitions go as compact JSON (:class:`~rxvoice.nats.wire.ControlMessage`)
    on ``control``. Call it before ``connect()`` to publish the handshake too.

    Example:
        >>> async with vnats.publish_connection(js, conn) as published:
        ...     await conn.connect()
        ...     ...
        >>> published.audio.stats, published.control.stats

    Args:
        client: A JetStream context or the NATS client.
        connection: The connection.
        subject: The audio subject template (see :func:`publish`).
        control: The control subject template, with ``{guild_id}``,
            ``{channel_id}`` and ``{type}`` (the event type).
        max_in_flight: The audio window (the control window holds 256).
        ack_timeout: Seconds before an unacknowledged message counts as timed out.

    Returns:
        A :class:`ConnectionPublisher` (``audio``, ``control``, ``drain()``,
        ``aclose()``; an async context manager that closes it).

    Raises:
        UsageError: A bad template or bound; no running asyncio loop.
    """
    audio = Publisher(
        client,
        subject,
        connection=connection,
        max_in_flight=max_in_flight,
        ack_timeout=ack_timeout,
    )
    events = ControlPublisher(client, connection, control, ack_timeout=ack_timeout)
    return ConnectionPublisher(audio, events, connection.on_audio_frame)


def packets(
    js: JetStreamContext,
    subject: str | Sequence[str] = "voice.*.*",
    *,
    durable: str | None = None,
    deliver: Literal["all", "new"] = "all",
    stream: str | None = None,
    batch: int = 256,
    ack_wait: float | None = None,
    max_ack_pending: int | None = None,
    stats: Counter[str] | None = None,
    on_diagnostic: Callable[[Diagnostic], None] | None = None,
) -> Observable[VoicePacket]:
    """The published frames with their context: guild, channel, DAVE epoch, wall-clock arrival.

    :func:`frames` is ``packets(...).pipe(to_frames())``; take packets when a
    worker needs to know which guild or channel a frame came from (share
    them with ``ops.share()`` and map a branch with :func:`to_frames`).
    The arguments are those of :func:`frames`.

    Example:
        >>> shared = vnats.packets(js, durable="recorder").pipe(ops.share())
        >>> shared.pipe(vnats.to_frames(), vops.decode_opus()).subscribe(on_pcm)

    Returns:
        A cold observable of :class:`~rxvoice.nats.wire.VoicePacket`.
    """
    return consume(
        js,
        subject,
        VoicePacket.parse,
        durable=durable,
        deliver=deliver,
        stream=stream,
        batch=batch,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
        stats=stats,
        on_diagnostic=on_diagnostic,
    )


def frames(
    js: JetStreamContext,
    subject: str | Sequence[str] = "voice.*.*",
    *,
    durable: str | None = None,
    deliver: Literal["all", "new"] = "all",
    stream: str | None = None,
    batch: int = 256,
    ack_wait: float | None = None,
    max_ack_pending: int | None = None,
    stats: Counter[str] | None = None,
    on_diagnostic: Callable[[Diagnostic], None] | None = None,
) -> Observable[AudioFrame]:
    """Frames published by :func:`publish`, read from JetStream: a source for the operators.

    Subscribing creates (or binds to) a pull consumer and emits its frames on
    the running asyncio loop, in stream order (so each user's frames in the
    order they were received); each message is acknowledged after its
    ``on_next`` returns. With ``durable`` the consumer survives the process:
    a worker that restarts with the same name resumes after the last frame
    it acknowledged, and several workers bound to one name share its
    messages (use partitions, see :func:`stream_config`, to keep each user's
    frames on one worker). Without it, the consumer is ephemeral.

    The frames are what :attr:`rxvoice.Connection.on_audio_frame` emitted in
    the publishing process: ``decode_opus()`` and the other operators take
    them as they are. ``received_at`` is the original arrival time moved to
    this process's loop clock (through both machines' wall clocks, so it is
    as good as their NTP): earlier than now by the transport and queueing
    delay, and comparable with ``loop.time()`` and other frames.

    A message that is not a frame is terminated (never redelivered),
    counted in ``stats["malformed_message"]`` and reported to
    ``on_diagnostic``; the stream goes on. The stream ends with an error
    only if the consumer cannot be created or the NATS client is closed.

    Example:
        >>> vnats.frames(js, "voice.*.*", durable="transcriber").pipe(
        ...     vops.decode_opus(), vops.resample(16_000)
        ... ).subscribe(on_pcm)

    Args:
        js: The JetStream context.
        subject: The filter subject (or several); ``voice.*.*`` is every
            speaker of every guild, ``voice.{guild}.*`` one guild.
        durable: The durable consumer's name (a consumer group); created with
            the arguments below when missing, bound as it is otherwise.
        deliver: Where a new consumer starts: ``"all"`` that the stream
            holds, or ``"new"`` messages only (a live worker that should not
            work through the stream's history first).
        stream: The stream; looked up from the subject when omitted.
        batch: The most messages fetched per request.
        ack_wait: Seconds before an unacknowledged message is redelivered
            (the server's default, 30 s, when ``None``).
        max_ack_pending: The most messages delivered and not yet acknowledged.
        stats: A counter to add to: ``received``, ``malformed_message``,
            ``ack_failed``, ``fetch_error``.
        on_diagnostic: Called for each malformed message.

    Returns:
        A cold observable of :class:`~rxvoice.events.AudioFrame`; each
        subscription is one consumer client.

    Raises:
        UsageError: ``batch`` below 1 or no subject; subscribing outside a
            running asyncio loop.
    """
    source = packets(
        js,
        subject,
        durable=durable,
        deliver=deliver,
        stream=stream,
        batch=batch,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
        stats=stats,
        on_diagnostic=on_diagnostic,
    )
    return source.pipe(to_frames())


def control_events(
    js: JetStreamContext,
    subject: str | Sequence[str] = "voicectl.>",
    *,
    durable: str | None = None,
    deliver: Literal["all", "new"] = "all",
    stream: str | None = None,
    ack_wait: float | None = None,
    stats: Counter[str] | None = None,
    on_diagnostic: Callable[[Diagnostic], None] | None = None,
) -> Observable[ControlMessage]:
    """Lifecycle events published by :func:`publish_connection`, read from JetStream.

    Works as :func:`frames` (durable consumers, acknowledgement after
    ``on_next``, malformed messages counted and skipped) for
    :class:`~rxvoice.nats.wire.ControlMessage` values: ``.event`` is a
    :class:`~rxvoice.events.SpeakingEvent`,
    :class:`~rxvoice.events.ClientConnect`, … as the connection emitted it.

    Example:
        >>> leaves = vnats.control_events(js, "voicectl.*.leave").pipe(
        ...     ops.map(lambda m: m.event))

    Args:
        js: The JetStream context.
        subject: The filter subject(s); ``voicectl.{guild}.>`` for one guild,
            ``voicectl.*.speaking`` for one type.
        durable: The durable consumer's name, or ``None`` for an ephemeral one.
        deliver: Where a new consumer starts (see :func:`frames`).
        stream: The stream; looked up from the subject when omitted.
        ack_wait: Seconds before an unacknowledged message is redelivered.
        stats: A counter to add to (see :func:`frames`).
        on_diagnostic: Called for each malformed message.

    Returns:
        A cold observable of :class:`~rxvoice.nats.wire.ControlMessage`.
    """
    return consume(
        js,
        subject,
        ControlMessage.parse,
        durable=durable,
        deliver=deliver,
        stream=stream,
        batch=64,
        ack_wait=ack_wait,
        max_ack_pending=None,
        stats=stats,
        on_diagnostic=on_diagnostic,
    )
