"""Voice operators: compose audio pipelines declaratively, test them in virtual time.

Import them as RxPY's own::

    from reactivex import operators as ops
    from rxvoice import operators as vops

    conn.on_audio_frame.pipe(
        vops.decode_opus(),
        vops.mix(),
        vops.write_wav("call.wav"),
    ).subscribe()

Each function returns ``Callable[[Observable[A]], Observable[B]]`` for
``Observable.pipe``. They are thin adapters over the pure classes of
:mod:`rxvoice.protocol` and :mod:`rxvoice.audio`: the algorithms are tested
there, the timing and plumbing here.

Conventions shared by every operator:

- **Per-user state on a flat stream.** The operators keep their state per user
  (by ``user_id``; by SSRC when the user is unknown) or per SSRC, so they work
  both on the interleaved stream of everyone and inside
  :func:`group_by_user` groups.
- **Time from the scheduler.** Deadlines and ticks use the ``scheduler``
  argument, else the one given to ``subscribe``, else an ``AsyncIOScheduler``
  on the running asyncio loop, else RxPY's ``TimeoutScheduler`` (the defaults
  on a monotonic clock; ``decrypt_session`` uses the Connection's). Under a
  ``reactivex.testing.TestScheduler`` the whole pipeline runs in virtual time
  (see :mod:`rxvoice.testing.marbles`).
- **Errors.** An exception from a user callback (a path function, a
  diagnostic callback) goes to that pipeline's ``on_error``. A bad packet
  never does: it is skipped or concealed and counted (``stats``, a
  :class:`collections.Counter` by :attr:`~rxvoice.events.Diagnostic.kind`, and
  ``on_diagnostic``, called with a :class:`~rxvoice.events.Diagnostic`).
- **Completion flushes.** Held packets, buffered audio and resampler tails are
  emitted when the source completes.

The marble diagrams are in the syntax of :mod:`rxvoice.testing.marbles` (and
were produced by running the operators with it): every element or group is
one 20 ms position; plain numbers are frames of speaker ``a`` by index, ``b1``
frames of speaker ``b``; ``g4`` a gap marker; ``p``/``c``/``f`` decoded,
concealed and FEC-recovered chunks, ``q`` silent ones; ``m`` mixed ticks.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from reactivex import GroupedObservable, Observable, abc

from rxvoice.events import (
    AudioFrame,
    AudioGap,
    AudioLevel,
    ClientDisconnect,
    Diagnostic,
    PcmChunk,
    VoiceActivityChange,
)
from rxvoice.operators._common import UserItem
from rxvoice.protocol.jitter import DEFAULT_CAPACITY, DEFAULT_LATENCY, DEFAULT_MAX_GAP

if TYPE_CHECKING:
    from pathlib import Path

    from rxvoice.events import Utterance
    from rxvoice.operators._aiter import ObservableIterator
    from rxvoice.operators._decrypt import SessionKeys
    from rxvoice.operators._timeline import Labels
    from rxvoice.operators._wav import PathSpec
    from rxvoice.protocol.crypto import RtpCrypto, TransportCipher
    from rxvoice.protocol.dave import DaveManager

__all__ = [
    "buffer_duration",
    "decode_opus",
    "decrypt",
    "decrypt_session",
    "group_by_user",
    "jitter_buffer",
    "levels",
    "mix",
    "resample",
    "to_async_iterable",
    "to_mono",
    "trim_silence",
    "voice_activity",
    "write_wav",
]

_T = TypeVar("_T")
_U = TypeVar("_U", bound=UserItem)


def jitter_buffer(
    latency: float = DEFAULT_LATENCY,
    capacity: int = DEFAULT_CAPACITY,
    *,
    max_latency: float | None = None,
    scheduler: abc.SchedulerBase | None = None,
) -> Callable[[Observable[AudioFrame]], Observable[AudioFrame | AudioGap]]:
    """Put each SSRC's frames back in sequence order, with gap markers for losses.

    One :class:`~rxvoice.protocol.jitter.JitterBuffer` per SSRC: frames come
    out strictly in sequence order across the 65535 → 0 wraparound;
    duplicates and packets arriving after their gap was declared are dropped;
    a missing packet is waited for ``latency`` seconds (one scheduler timer for
    all SSRCs), then an :class:`~rxvoice.events.AudioGap` marker takes its
    place and the frames held behind it flow. At most ``capacity`` packets are
    held per SSRC. A stream with nothing missing passes with no delay. On
    completion every held frame is flushed. An SSRC quiet for a minute is
    forgotten (SSRCs churn in a long call); if it comes back it starts afresh.

    This is the jitter stage of the Connection's own receive path
    (:class:`~rxvoice.protocol.receiver.VoiceReceiver`):
    :attr:`rxvoice.Connection.on_audio_frame` is already jitter-buffered; use
    this on :attr:`~rxvoice.Connection.on_raw_audio_frame` or on the output of
    :func:`decrypt` to choose your own trade-off, or to get the gap markers.
    The first frame after a sender restart comes out with ``resynced=True``.

    .. marble::
        :alt: jitter_buffer

        -1-3-2-5-------6-|
        [   jitter_buffer(latency=0.06)   ]
        -1---(2,3)----(g4,5)----6-|

    Example:
        >>> frames = conn.on_raw_audio_frame.pipe(vops.jitter_buffer(latency=0.08))

    Args:
        latency: Seconds to wait for a missing packet before declaring it lost
            (the minimum when adaptive).
        capacity: The most packets held per SSRC (the reordering window).
        max_latency: Enables adaptive latency up to this many seconds.
        scheduler: Times the deadlines; defaults to the subscription's scheduler.

    Returns:
        An operator from :class:`~rxvoice.events.AudioFrame` to frames in order
        interleaved with :class:`~rxvoice.events.AudioGap` markers.

    Raises:
        UsageError: If an argument is out of range.
    """
    from rxvoice.operators._jitter import jitter_buffer_

    return jitter_buffer_(latency, capacity, max_latency, scheduler)


def decrypt(
    cipher: TransportCipher | RtpCrypto,
    *,
    dave: DaveManager | None = None,
    user_of: Callable[[int], str | None] | None = None,
    stats: Counter[str] | None = None,
    on_diagnostic: Callable[[Diagnostic], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> Callable[[Observable[bytes]], Observable[AudioFrame]]:
    """Remove transport encryption and DAVE from raw voice datagrams, with fixed keys.

    For applications that tap the raw UDP stream. It runs the first steps of
    the Connection's own receive path (:class:`~rxvoice.protocol.receiver.VoiceReceiver`):
    each RTP datagram is opened with the transport cipher (padding and the
    header extension removed), attributed to a user with ``user_of``, and
    DAVE-decrypted with that user's key. Datagrams that are not RTP (RTCP,
    keepalives) or not Opus are skipped and counted in ``stats`` only.
    Datagrams that cannot be decrypted (malformed, wrong key, DAVE failure)
    are skipped, counted and reported through ``on_diagnostic``; they never
    end the stream. A DAVE frame that fails is retried once the DAVE
    session's keys change (within 2 s; a sender may switch keys before our
    commit arrives), so its failure is reported up to 2 s late. A DAVE frame
    from an SSRC with no known user cannot be decrypted (the Connection holds
    such packets until op 5 maps the SSRC; this operator does not).

    For the keys of a live :class:`rxvoice.Connection`, which change with its
    sessions, use :func:`decrypt_session`.

    .. marble::
        :alt: decrypt

        -1-x-2-r-3-|
        [ decrypt(cipher, user_of=users.get) ]
        -1---2---3-|

    Example:
        >>> counts = collections.Counter()
        >>> frames = datagrams.pipe(vops.decrypt(cipher, user_of=ssrc_map.get, stats=counts))

    Args:
        cipher: A :class:`~rxvoice.protocol.crypto.TransportCipher` or
            :class:`~rxvoice.protocol.crypto.RtpCrypto`.
        dave: The DAVE session; ``None`` means transport encryption only.
        user_of: Maps an SSRC to its user id (``None`` when unknown); without
            it every frame's ``user_id`` is ``None``.
        stats: A counter to add to, by diagnostic kind (``"undecryptable_packet"``,
            ``"dave_decrypt_failed"``, ``"not_opus"``, ``"not_rtp_rtcp"``...).
        on_diagnostic: Called with each undecryptable datagram's
            :class:`~rxvoice.events.Diagnostic`.
        clock: The time DAVE's transition windows and ``received_at`` use;
            the scheduler's time by default.

    Returns:
        An operator from datagrams (``bytes``) to
        :class:`~rxvoice.events.AudioFrame` in arrival order (pipe through
        :func:`jitter_buffer` to reorder).

    Raises:
        UsageError: ``cipher`` is not a cipher (a Connection: see :func:`decrypt_session`).
    """
    from rxvoice.operators._decrypt import decrypt_

    return decrypt_(cipher, dave, user_of, stats, on_diagnostic, clock)


def decrypt_session(
    session: SessionKeys,
    *,
    stats: Counter[str] | None = None,
    on_diagnostic: Callable[[Diagnostic], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> Callable[[Observable[bytes]], Observable[AudioFrame]]:
    """:func:`decrypt` with the keys of a live session, such as a :class:`rxvoice.Connection`.

    The session's ``rtp``, ``dave`` and ``ssrcs`` are read at every datagram,
    so the operator keeps working across reconnects and new sessions;
    datagrams before the session has keys are skipped and counted
    (``"no_keys"``).

    .. marble::
        :alt: decrypt_session

        -k-1-x-2-|
        [ decrypt_session(conn) ]
        ---1---2-|

    (``k``: a datagram before the session had keys; ``x``: one that cannot be
    decrypted. Both are skipped and counted, never an error.)

    Example:
        >>> frames = datagrams.pipe(vops.decrypt_session(conn))  # follow a Connection's keys

    Args:
        session: An object with ``rtp``, ``dave`` and ``ssrcs`` attributes (a Connection).
        stats: A counter to add to, by kind (see :func:`decrypt`).
        on_diagnostic: Called with each undecryptable datagram's
            :class:`~rxvoice.events.Diagnostic`.
        clock: The time DAVE's transition windows and ``received_at`` use;
            ``time.monotonic`` by default (the event loop's clock, the one a
            Connection's DaveManager measures with, whatever the scheduler).

    Returns:
        An operator from datagrams (``bytes``) to
        :class:`~rxvoice.events.AudioFrame` in arrival order.
    """
    from rxvoice.operators._decrypt import decrypt_session_

    return decrypt_session_(session, stats, on_diagnostic, clock)


def group_by_user(
    leaves: Observable[ClientDisconnect] | None = None,
    *,
    include_unknown: bool = False,
) -> Callable[[Observable[_U]], Observable[GroupedObservable[str | None, _U]]]:
    """Split a stream into one group per user, ended when the user leaves.

    The group key is the user id, not the SSRC, so a user who reconnects with
    a new SSRC stays in the same group. When ``leaves`` emits a
    :class:`~rxvoice.events.ClientDisconnect` for a user, that user's group
    completes (finishing its pipeline: WAV files close, buffers flush); if the
    user comes back, a new group starts. ``leaves`` should be hot, like
    :attr:`rxvoice.Connection.on_client_disconnect`.

    Items whose ``user_id`` is ``None`` (an SSRC not mapped yet) are dropped,
    unless ``include_unknown`` puts them in a group keyed ``None``.

    Works on anything with ``user_id`` and ``ssrc``: frames, gaps, chunks.

    .. marble::
        :alt: group_by_user

        frames: -1-b1-2-b2-3-|
        leaves: ------L-------
        [  group_by_user(leaves)  ]
        groups: -A-B-----C-|
             A: -1---2|
             B: ---b1---b2---|
             C: ---------3-|

    Example:
        One WAV file per visit (a user who comes back gets a new group, so a
        new name: reusing the name would overwrite the first visit):

        >>> visits = itertools.count(1)
        >>> conn.on_audio_frame.pipe(
        ...     vops.group_by_user(conn.on_client_disconnect),
        ...     ops.flat_map(lambda user: user.pipe(
        ...         vops.decode_opus(),
        ...         vops.write_wav(f"{user.key}-{next(visits)}.wav"))),
        ... ).subscribe()

    Args:
        leaves: Departures that end a user's group; ``None``: groups end only
            when the source does. Once ``leaves`` completes or errors, the
            open groups end only with the source.
        include_unknown: Keep items without a user id, in a group keyed ``None``.

    Returns:
        An operator emitting a ``GroupedObservable`` (``.key`` is the user id)
        per user.
    """
    from rxvoice.operators._group import group_by_user_

    return group_by_user_(leaves, include_unknown)


def decode_opus(
    *,
    fec: bool = True,
    max_conceal: int = 5,
    sample_rate: int = 48_000,
    channels: int = 2,
    max_gap: int = DEFAULT_MAX_GAP,
    decode_on: abc.SchedulerBase | None = None,
    stats: Counter[str] | None = None,
    on_diagnostic: Callable[[Diagnostic], None] | None = None,
) -> Callable[[Observable[AudioFrame | AudioGap]], Observable[PcmChunk]]:
    """Decode each SSRC's Opus frames, concealing or recovering lost ones.

    One :class:`~rxvoice.audio.opus.OpusDecoder` per SSRC (reused buffers,
    low-level libopus calls). A loss is seen from the sequence numbers (an
    :class:`~rxvoice.events.AudioGap` marker is accepted and needs no action):
    before decoding the frame after a loss of ``n`` frames, ``n`` chunks fill
    it (at most ``max_conceal``): libopus packet-loss concealment, except that
    the frame right before the current one is rebuilt from the current
    packet's in-band FEC data when it has some (``recovered=True``; also when
    ``max_conceal`` leaves the middle of a long loss unfilled). A
    corrupted packet is concealed instead (``concealed=True``) and counted. A
    frame that a jitter buffer released with ``resynced=True`` (the sender
    restarted) resets the decoder, and so does a sequence jump beyond
    ``max_gap`` in a stream that skipped the jitter buffer; a user's new SSRC
    gets a fresh decoder (late frames of the old one still decode with
    theirs). The decoder of an SSRC quiet for a minute (by ``received_at``) is
    freed; if it comes back it gets a fresh one. Late or
    duplicate frames (put the stream through :func:`jitter_buffer` first) are
    dropped and counted.

    Every chunk carries its **call time** (:attr:`~rxvoice.events.PcmChunk.time`,
    on the clock of ``received_at``): anchored on the arrival of the first
    packet of each talk spurt, then advanced by RTP timestamp, so it is smooth
    within a spurt and right after a pause (senders stop the timestamp while
    quiet). A packet that follows the sender's silence frames (senders end
    each spurt with five) and arrives more than
    :data:`~rxvoice.operators._decode.NEW_SPURT_LATENESS` (0.1 s) later than
    its timestamp predicts starts a new spurt, as does a resync or any packet
    more than :data:`~rxvoice.operators._decode.STALL_LIMIT` (1 s) late;
    lateness in the middle of speech (our event loop stalled) keeps the spurt
    whole. Concealed and FEC chunks get the time of the audio they replace.

    With ``decode_on`` (a scheduler, e.g. a ``ThreadPoolScheduler``) decoding
    runs there, off the event loop: each SSRC's frames stay in order, different users
    decode in parallel and may interleave differently than they arrived.

    .. marble::
        :alt: decode_opus

        -1-2-4-5-7-|
        [    decode_opus()     ]
        -p1-p2-(f3,p4)-p5-(f6,p7)-|

    Example:
        >>> pcm = conn.on_audio_frame.pipe(vops.decode_opus())
        >>> pcm = frames.pipe(vops.decode_opus(decode_on=ThreadPoolScheduler(2)))

    Args:
        fec: Use in-band FEC to recover a lost frame from the next packet.
        max_conceal: The most frames synthesised for one loss (5 = 100 ms);
            the rest of a longer loss is left out (a mix fills it with silence).
        sample_rate: Output rate: 8000, 12000, 16000, 24000 or 48000 Hz.
        channels: Output channels, 1 or 2.
        max_gap: Sequence jumps beyond this restart the stream (for frames
            that did not pass a jitter buffer, which marks restarts itself).
        decode_on: Where decoding runs; ``None``: synchronously, in order.
        stats: A counter to add to (``"corrupt_packet"``, ``"late_packet"``,
            ``"decoder_reset"``).
        on_diagnostic: Called with each of those as a
            :class:`~rxvoice.events.Diagnostic`.

    Returns:
        An operator from frames (and gap markers) to
        :class:`~rxvoice.events.PcmChunk` of int16 ``(samples, channels)``.

    Raises:
        OpusUnavailable: If libopus is not installed.
        UsageError: If ``sample_rate`` or ``channels`` is not supported.
    """
    from rxvoice.operators._decode import decode_opus_

    return decode_opus_(
        sample_rate, channels, fec, max_conceal, max_gap, decode_on, stats, on_diagnostic
    )


def mix(
    *,
    interval: float = 0.02,
    delay: float = 0.2,
    sample_rate: int = 48_000,
    channels: int = 2,
    max_ahead: int = 50,
    stats: Counter[str] | None = None,
    scheduler: abc.SchedulerBase | None = None,
) -> Callable[[Observable[PcmChunk]], Observable[PcmChunk]]:
    """Mix every user's chunks into one stream of fixed ticks, on the call's timeline.

    Tick ``k`` holds the audio heard at call time ``origin + k * interval``
    (``origin``: the first chunk's :attr:`~rxvoice.events.PcmChunk.time`) and
    is emitted ``delay`` seconds after that, timed by the scheduler: the
    headroom for chunks arriving after their call time. A
    :class:`~rxvoice.audio.mixer.Mixer` places the first chunk of each talk
    spurt in the first tick at or after its call time, and the rest of the
    spurt at its RTP timestamp's distance from it, whenever each chunk
    arrives; it sums the users of each tick with saturation. A tick with
    nobody is silence. After the source completes the queued audio is played
    out, then the stream completes.

    So a chunk arriving up to ``delay`` after its call time is mixed. The
    default, 0.2 s (:data:`~rxvoice.operators._mix.DEFAULT_DELAY`), is what a
    Connection's audio can be late by: the audio standing in for a lost
    packet (concealed or FEC-recovered) comes out when the jitter buffer
    gives up on it, ``jitter_latency`` (0.06 s) after the next packet, so
    0.06 s plus the loss's length after its call time; 0.2 s covers the
    longest loss :func:`decode_opus` conceals (0.1 s) with 0.04 s to spare.
    Raise it by as much as you raise the Connection's ``jitter_latency``;
    lower it for a mix closer to live that may lose concealed audio. A chunk arriving after
    its tick was emitted is dropped and counted (``"late_chunk"``); the rest
    of its talk spurt keeps its ticks. A spurt whose first chunk is that late
    starts in the next tick instead (``"late_spurt"``).

    Output chunks have ``user_id=None``, ``ssrc=None``, timestamp
    ``tick * 960`` (for 20 ms ticks) and, as call time, that of the audio they
    hold (``origin + tick * interval``), so the mix lines up with the users'
    chunks (within a tick) in :func:`write_timeline`. A chunk without a call
    time (``time == 0.0``) is placed by its arrival, on the scheduler's
    clock; the scheduler's clock and the chunks' call times may be different
    clocks (they are tied by the first chunk), ticking at the same rate.

    .. marble::
        :alt: mix

        -p0(p1)-p3---bp0(bp1)-|
        [            mix(delay=0.04)            ]
        ---m0(m1)m2(m3)m4(m5)m6(m7)(m8,|)

    Example:
        >>> conn.on_audio_frame.pipe(vops.decode_opus(), vops.mix(), vops.write_wav("mix.wav"))

    Args:
        interval: Seconds per tick (0.02: one Opus frame).
        delay: Seconds from a chunk's call time to the emission of its tick.
        sample_rate: The rate of the chunks (and of the mix).
        channels: The channel count of the chunks (and of the mix).
        max_ahead: Ticks beyond the delay a user's audio may be queued ahead
            before the user is re-anchored (bounds memory).
        stats: A counter to add to: ``"late_chunk"`` (a chunk dropped: its
            tick was already emitted), ``"late_spurt"`` (a talk spurt started
            later than its call time), ``"duplicate_chunk"`` (a second chunk
            for a tick its user already filled, dropped).
        scheduler: Times the ticks; defaults to the subscription's scheduler.

    Returns:
        An operator from :class:`~rxvoice.events.PcmChunk` of any users to
        the mixed chunks, one per tick. A chunk of another rate or layout
        ends it with ``UsageError``.

    Raises:
        UsageError: If an argument is out of range.
    """
    from rxvoice.operators._mix import mix_

    return mix_(interval, delay, sample_rate, channels, max_ahead, stats, scheduler)


def buffer_duration(seconds: float) -> Callable[[Observable[PcmChunk]], Observable[PcmChunk]]:
    """Re-cut each user's audio into chunks of ``seconds`` seconds.

    A user's chunks are joined back to back (pauses between talk spurts are
    not filled) and cut every ``seconds`` of samples; the last, shorter, chunk
    is emitted when the source completes. A chunk's timestamp and call time
    are those of its first sample; it is ``concealed`` / ``recovered`` if any
    part was.

    .. marble::
        :alt: buffer_duration

        -p0-p1-p2-p3-p4-|
        [ buffer_duration(0.04) ]
        ---p0---p2---(p4,|)

    Example:
        >>> seconds = pcm.pipe(vops.buffer_duration(1.0))

    Args:
        seconds: The chunk duration.

    Returns:
        An operator from :class:`~rxvoice.events.PcmChunk` to chunks of
        ``round(sample_rate * seconds)`` samples.

    Raises:
        UsageError: If ``seconds`` is not positive.
    """
    from rxvoice.operators._buffer import buffer_duration_

    return buffer_duration_(seconds)


def to_mono() -> Callable[[Observable[PcmChunk]], Observable[PcmChunk]]:
    """Average the channels of every chunk into one.

    .. marble::
        :alt: to_mono

        -p0-p1-|
        [ to_mono() ]
        -p0-p1-|

    Example:
        >>> mono = pcm.pipe(vops.to_mono())

    Returns:
        An operator from :class:`~rxvoice.events.PcmChunk` to chunks shaped
        ``(samples, 1)``.
    """
    from rxvoice.operators._mono import to_mono_

    return to_mono_()


def resample(to_rate: int = 16_000) -> Callable[[Observable[PcmChunk]], Observable[PcmChunk]]:
    """Convert each user's audio to ``to_rate``, e.g. 16 kHz for speech recognition.

    One :class:`~rxvoice.audio.dsp.Resampler` per user, so the filter state
    runs across chunks (no clicks at chunk edges) and content above the new
    Nyquist frequency is filtered out instead of aliasing. The filter delay
    is removed and the filter tail emitted on completion, so the output is
    time-aligned and as long as :func:`rxvoice.audio.dsp.resample` of the
    whole signal. Chunks already at ``to_rate`` pass unchanged.

    .. marble::
        :alt: resample

        -p0-p1-p2-|
        [ resample(16000) ]
        -p0-p0-p1-(p2,|)

    Example:
        >>> speech = pcm.pipe(vops.to_mono(), vops.resample(16_000), vops.buffer_duration(0.5))

    Args:
        to_rate: The output rate in Hz.

    Returns:
        An operator from :class:`~rxvoice.events.PcmChunk` to chunks at
        ``to_rate`` (timestamps stay in 48 kHz RTP units; call times are
        those of each chunk's first output sample).

    Raises:
        UsageError: If ``to_rate`` is not positive.
    """
    from rxvoice.operators._resample import resample_

    return resample_(to_rate)


def levels(*, floor: float = -math.inf) -> Callable[[Observable[PcmChunk]], Observable[AudioLevel]]:
    """Measure the loudness of every chunk (RMS and dBFS), per user.

    .. marble::
        :alt: levels

        -p0-p1-|
        [ levels() ]
        -L0-L1-|

    Example:
        >>> pcm.pipe(vops.levels(floor=-100.0)).subscribe(lambda l: print(l.user_id, l.dbfs))

    Args:
        floor: The dBFS reported for digital silence (``-inf`` by default).

    Returns:
        An operator from :class:`~rxvoice.events.PcmChunk` to
        :class:`~rxvoice.events.AudioLevel`.
    """
    from rxvoice.operators._levels import levels_

    return levels_(floor)


def voice_activity(
    *,
    threshold_dbfs: float = -45.0,
    start_frames: int = 2,
    hangover_frames: int = 15,
    silence_timeout: float | None = None,
    scheduler: abc.SchedulerBase | None = None,
) -> Callable[[Observable[PcmChunk | AudioGap]], Observable[VoiceActivityChange]]:
    """Tell when each user starts and stops speaking, from energy and packets.

    One :class:`~rxvoice.audio.dsp.VoiceActivityDetector` per user, fed one
    chunk (a 20 ms frame from :func:`decode_opus`) at a time: speech starts
    after ``start_frames`` loud chunks in a row and stops after
    ``hangover_frames`` quiet ones. Concealed chunks and gap markers count as
    quiet. Discord clients stop sending when silent, so a user who sends
    nothing for ``silence_timeout`` seconds (scheduler time) while speaking
    is declared stopped too.

    .. marble::
        :alt: voice_activity

        -q0-p1-p2-p3-p4-q5-q6-q7-|
        [ voice_activity(start_frames=2, hangover_frames=3) ]
        -----on1---------off5-|

    Example:
        >>> pcm.pipe(vops.voice_activity()).subscribe(lambda e: print(e.user_id, e.speaking))

    Args:
        threshold_dbfs: Level separating speech from background.
        start_frames: Loud chunks in a row that start speech.
        hangover_frames: Quiet chunks in a row that stop it.
        silence_timeout: Seconds without any chunk that stop it; defaults to
            ``hangover_frames`` times 20 ms.
        scheduler: Times the silence timeout; defaults to the subscription's scheduler.

    Returns:
        An operator emitting :class:`~rxvoice.events.VoiceActivityChange`
        when a user starts or stops speaking.

    Raises:
        UsageError: If a frame count is below 1.
    """
    from rxvoice.operators._vad import voice_activity_

    return voice_activity_(
        threshold_dbfs, start_frames, hangover_frames, silence_timeout, scheduler
    )


def trim_silence(
    threshold_dbfs: float = -50.0,
    *,
    window: int = 480,
    max_pause: float | None = None,
) -> Callable[[Observable[PcmChunk]], Observable[PcmChunk]]:
    """Drop each user's leading and trailing silence.

    Nothing is emitted for a user until a chunk has sound (a ``window`` of
    samples at or above ``threshold_dbfs``); that chunk is cut to start at
    its first loud window. Silence after sound is held until more sound
    follows (then emitted, so inner pauses are kept) or the source completes
    (then dropped, and the last loud chunk cut after its last loud window).
    A chunk is emitted one chunk late, once it is known not to be trailing.

    .. marble::
        :alt: trim_silence

        -q0-q1-p2-q3-p4-q5-q6-|
        [   trim_silence()   ]
        ---------(p2,p3)-----(p4,|)

    Example:
        >>> speech = pcm.pipe(vops.trim_silence(-45.0, max_pause=2.0))

    Args:
        threshold_dbfs: Windows below this level are silence.
        window: The window length in samples (480: 10 ms at 48 kHz).
        max_pause: Inner silences are shortened to this many seconds, which
            bounds what is held; ``None`` keeps them whole.

    Returns:
        An operator from :class:`~rxvoice.events.PcmChunk` to chunks without
        the leading and trailing silence of each user.

    Raises:
        UsageError: If ``window`` is not positive.
    """
    from rxvoice.operators._trim import trim_silence_

    return trim_silence_(threshold_dbfs, window, max_pause)


def write_wav(path: PathSpec) -> Callable[[Observable[PcmChunk]], Observable[Path]]:
    """Write the chunks to WAV files (16-bit PCM, stdlib ``wave``): per user or one mix.

    ``path`` chooses the file of each stream (user, or SSRC when unknown):

    - a template with ``{user_id}`` and/or ``{ssrc}``, e.g. ``"rec/{user_id}.wav"``
      (``{user_id}`` is ``mix`` for the chunks of :func:`mix`);
    - a function ``user_id -> path`` (``user_id`` is ``None`` for the mix);
    - a plain path, for a single stream such as the mix: a second stream
      mapping to the same file ends the pipeline with ``UsageError``.

    A file is opened (an existing one overwritten; its folder created if
    needed) at its stream's first chunk, takes that chunk's rate and channel
    count, and is closed (its header completed) when the source completes,
    errors, or the subscription is disposed. A file that cannot be created
    or written ends the pipeline with the ``OSError`` (pass ``on_error`` to
    ``subscribe`` to handle it). Chunks are written back to back: a user's
    pauses are not kept (:func:`write_timeline` keeps them, and never
    replaces a file). On completion the operator emits each file's path.

    .. marble::
        :alt: write_wav

        -p0-bp0-p1-|
        [ write_wav("{user_id}.wav") ]
        -------(A,B,|)

    Example:
        >>> pcm.pipe(vops.write_wav("{user_id}.wav")).subscribe(print)
        >>> pcm.pipe(vops.mix(), vops.write_wav("mix.wav")).subscribe()

    Args:
        path: A template, a function of the user id, or a plain path.

    Returns:
        An operator from :class:`~rxvoice.events.PcmChunk` to the
        :class:`pathlib.Path` of every file written, on completion. I/O
        errors and exceptions of ``path`` go to ``on_error``.
    """
    from rxvoice.operators._wav import write_wav_

    return write_wav_(path)


def to_async_iterable(
    *, max_pending: int | None = None
) -> Callable[[Observable[_T]], ObservableIterator[_T]]:
    """Iterate an observable with ``async for``, for code that prefers asyncio.

    The subscription starts at the first ``__anext__`` (items a hot source
    emits before are not seen) and ends when the source completes (the
    iteration stops), errors (the error is raised) or the iterator is closed
    (``aclose()``, or leaving ``async with``). Items emitted from other
    threads are handed to the iterating event loop safely.

    .. marble::
        :alt: to_async_iterable

        -p1-p2-p3-|
        [ to_async_iterable() ]
        async for: p1, p2, p3

    Example:
        >>> async with conn.on_audio_frame.pipe(
        ...     vops.decode_opus(), vops.to_async_iterable()) as chunks:
        ...     async for chunk in chunks:
        ...         await transcribe(chunk)

    Args:
        max_pending: The most items waiting for the consumer; beyond it the
            oldest are dropped (and counted in ``.dropped``). ``None``: no limit.

    Returns:
        An operator from an observable to an async iterator (also an async
        context manager) over its items.

    Raises:
        UsageError: If ``max_pending`` is below 1.
    """
    from rxvoice.operators._aiter import to_async_iterable_

    return to_async_iterable_(max_pending)


# -- Call time: utterances and recordings on the call's timeline ---------------------------

__all__ += ["utterances", "write_timeline"]


def utterances(
    *,
    sample_rate: int | None = 16_000,
    mono: bool = True,
    pre_roll: float = 0.2,
    post_roll: float = 0.2,
    max_duration: float = 30.0,
    threshold_dbfs: float = -45.0,
    start_frames: int = 2,
    hangover_frames: int = 15,
    silence_timeout: float | None = None,
    scheduler: abc.SchedulerBase | None = None,
) -> Callable[[Observable[PcmChunk | AudioGap]], Observable[Utterance]]:
    """Cut each user's speech into utterances, ready for a speech recogniser.

    Per user, the voice activity of :func:`voice_activity` (speech starts
    after ``start_frames`` loud chunks, stops after ``hangover_frames`` quiet
    ones or when the user sends nothing for ``silence_timeout``), with
    **pre-roll**: an utterance begins ``pre_roll`` seconds before its first
    loud chunk, so the onset that the detector needs to be sure is not lost.
    It ends ``post_roll`` seconds after the last loud chunk. One
    :class:`~rxvoice.events.Utterance` is emitted per utterance when it ends:
    the user, the SSRC, the **call times** of its start and end (see
    :attr:`~rxvoice.events.PcmChunk.time`: they line up with every other
    user's and with a recording's timeline) and its PCM, 16 kHz mono by
    default. A stretch without packets inside an utterance is silence, so the
    PCM is on the call's timeline too.

    **Bounded in length:** speech longer than ``max_duration`` (30 s, the
    window of Whisper-style recognisers) is split there; the part is emitted
    at once with ``continues=True`` and the next part starts where it ends,
    so nothing is lost and memory stays bounded. Utterances of one user never
    overlap. On completion, an utterance in progress is emitted.

    Feed it the 20 ms chunks of :func:`decode_opus` (gap markers of
    :func:`jitter_buffer` are accepted and count as quiet).

    .. marble::
        :alt: utterances

        -0(1)(2)(3)(4)(5)(6)-----|
        [ utterances(hangover_frames=3) ]
        ----------u0:7--|

    In the diagram ``u0:7`` is an utterance of speaker ``a`` from the start
    of frame 0 to the end of frame 6, emitted when the silence timeout
    (three frames) declares the speech over.

    Example:
        >>> async def transcribe_all(conn):
        ...     speech = conn.on_audio_frame.pipe(vops.decode_opus(), vops.utterances())
        ...     async with speech.pipe(vops.to_async_iterable()) as items:
        ...         async for u in items:
        ...             print(f"{u.start:.2f}-{u.end:.2f}", u.user_id, await transcribe(u.pcm))

    Args:
        sample_rate: The rate of the utterances' PCM (``None``: the chunks').
        mono: Average the channels into one.
        pre_roll: Seconds kept before the first loud chunk.
        post_roll: Seconds kept after the last loud chunk (at most what
            arrived before the speech was declared over).
        max_duration: The longest utterance in seconds; longer speech is split.
        threshold_dbfs: Level separating speech from background.
        start_frames: Loud chunks in a row that start speech.
        hangover_frames: Quiet chunks in a row that stop it.
        silence_timeout: Seconds without any chunk that stop it; defaults to
            ``hangover_frames`` times 20 ms.
        scheduler: Times the silence timeout; defaults to the subscription's scheduler.

    Returns:
        An operator from :class:`~rxvoice.events.PcmChunk` (and
        :class:`~rxvoice.events.AudioGap`) to :class:`~rxvoice.events.Utterance`.
        A user's chunks changing rate or channel count end it with ``UsageError``.

    Raises:
        UsageError: If an argument is out of range.
    """
    from rxvoice.operators._utterances import utterances_

    return utterances_(
        threshold_dbfs,
        start_frames,
        hangover_frames,
        pre_roll,
        post_roll,
        max_duration,
        sample_rate,
        mono,
        silence_timeout,
        scheduler,
    )


def write_timeline(
    folder: str | os.PathLike[str],
    *,
    start: float | None = None,
    labels: Labels | None = None,
) -> Callable[[Observable[PcmChunk]], Observable[Path]]:
    """Write one WAV per user **on the call's timeline**, plus the mix, in ``folder``.

    Each chunk is written at its call time (:attr:`~rxvoice.events.PcmChunk.time`):
    sample ``k`` of every file was heard at ``start + k / rate``, with silence
    where the user was quiet (or joined later). On completion every file is
    padded to the longest, so all files have the recording's length and line
    up with each other (and with the mix, when the :func:`mix` chunks go
    through the same sink) in any editor. A chunk overlapping what is already
    written (its time went back a little) loses its overlapping head.

    File names say whose voice it is: ``{label}-{user_id}.wav`` with the
    label given by ``labels`` (a display name; made safe for file systems),
    ``{user_id}.wav`` without one, ``mix.wav`` for the chunks of :func:`mix`,
    ``ssrc-{ssrc}.wav`` for an SSRC with no known user. A user's new SSRC
    (a reconnect) goes on in the same file.

    **Never replaces a file:** names are claimed with an exclusive create; if
    ``name.wav`` exists (or appears), ``name-2.wav`` is used, then
    ``name-3.wav``..., with a warning logged on ``rxvoice.operators``. The
    paths emitted on completion tell where each stream went. Nothing is ever
    deleted.

    .. marble::
        :alt: write_timeline

        -p0-bp0-p1-|
        [ write_timeline("rec") ]
        -------(A,B,|)

    Example:
        >>> pcm = conn.on_audio_frame.pipe(vops.decode_opus(), ops.share())
        >>> reactivex.merge(pcm, pcm.pipe(vops.mix())).pipe(
        ...     vops.write_timeline("rec", start=loop.time(), labels={"1001": "Ada"})
        ... ).subscribe(print)  # rec/Ada-1001.wav, rec/mix.wav, ... when the call ends

    Args:
        folder: Where the files go (created if needed).
        start: The call time of sample 0 of every file; by default the time
            of the first chunk the sink receives. Audio before it is dropped.
        labels: Display names by user id: a mapping, or a function
            returning a name or ``None``.

    Returns:
        An operator from :class:`~rxvoice.events.PcmChunk` to the
        :class:`pathlib.Path` of every file written, on completion. I/O
        errors, a user's chunks changing format, and exceptions of
        ``labels`` go to ``on_error`` (the files are closed, readable).
    """
    from rxvoice.operators._timeline import write_timeline_

    return write_timeline_(folder, start, labels)
