"""The ``voice_activity`` operator: speech start/stop per user, from energy and missing packets.

Also the plumbing it shares with ``utterances``: one state per user, fed chunks
and gap markers, with a silence timer while the user speaks (Discord clients
stop sending when quiet, so "no packets" must end speech too).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable, SerialDisposable

from rxvoice.audio.dsp import VoiceActivity, VoiceActivityDetector
from rxvoice.audio.opus import FRAME_DURATION, SAMPLES_PER_FRAME
from rxvoice.events import AudioGap, PcmChunk, VoiceActivityChange
from rxvoice.operators._common import (
    RTP_RATE,
    PcmArray,
    StreamKey,
    choose_scheduler,
    now_of,
    stream_key,
)
from rxvoice.protocol.seq import ts_add, ts_diff

_Out = TypeVar("_Out")
_T = TypeVar("_T")


class SpeechState(Protocol[_Out]):
    """One user's state in an operator built with :func:`per_speaker`."""

    @property
    def speaking(self) -> bool:
        """Whether the user is speaking (the silence timer runs only then)."""
        ...

    def push(self, item: PcmChunk | AudioGap) -> list[_Out]:
        """Take the user's next chunk or gap marker; return what to emit."""
        ...

    def silence(self) -> list[_Out]:
        """The user sent nothing for the silence timeout while speaking."""
        ...

    def flush(self) -> list[_Out]:
        """The source completed: return what is still held."""
        ...


class _Watched:
    """A user's state and its silence timer."""

    __slots__ = ("armed", "last_seen", "state", "timer")

    def __init__(self, state: SpeechState[Any]) -> None:
        self.state = state
        self.timer = SerialDisposable()
        self.armed = False  # a silence check is scheduled
        self.last_seen = 0.0  # scheduler time of the user's last item


def per_speaker(
    new: Callable[[PcmChunk | AudioGap], SpeechState[_T]],
    timeout: float,
    scheduler: abc.SchedulerBase | None,
) -> Callable[[Observable[PcmChunk | AudioGap]], Observable[_T]]:
    """Build an operator keeping one :class:`SpeechState` per user, with a silence timer.

    Items are routed by :func:`stream_key`; ``new(first_item)`` makes a user's
    state. While a state says it is speaking, a user who sends nothing for
    ``timeout`` seconds (scheduler time) gets :meth:`SpeechState.silence`.
    On completion every state is flushed, in order of first appearance.
    """

    def operator(source: Observable[PcmChunk | AudioGap]) -> Observable[_T]:
        def subscribe(
            observer: abc.ObserverBase[_T],
            scheduler_: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            clock = choose_scheduler(scheduler, scheduler_)
            lock = threading.RLock()
            users: dict[StreamKey, _Watched] = {}
            stopped = False

            def emit(values: list[_T]) -> None:
                for value in values:
                    observer.on_next(value)

            def check_silence(_: abc.SchedulerBase, watched: Any) -> None:
                with lock:
                    watched.armed = False
                    if stopped or not watched.state.speaking:
                        return
                    # One timer per timeout period, not one per chunk: re-arm
                    # for the rest of the period if the user sent meanwhile.
                    remaining = watched.last_seen + timeout - now_of(clock)
                    if remaining > 1e-9:
                        arm(watched, remaining)
                        return
                    try:
                        out = watched.state.silence()
                    except Exception as error:
                        fail(error)
                        return
                    emit(out)

            def arm(watched: _Watched, delay: float) -> None:
                watched.armed = True
                watched.timer.disposable = clock.schedule_relative(delay, check_silence, watched)

            def on_next(item: PcmChunk | AudioGap) -> None:
                with lock:
                    if stopped:
                        return
                    key = stream_key(item)
                    try:
                        watched = users.get(key)
                        if watched is None:
                            watched = users[key] = _Watched(new(item))
                        out = watched.state.push(item)
                    except Exception as error:  # a user's bad data (a format change)
                        fail(error)
                        return
                    emit(out)
                    watched.last_seen = now_of(clock)
                    if watched.state.speaking and not watched.armed:
                        arm(watched, timeout)

            def stop() -> None:
                nonlocal stopped
                stopped = True
                for watched in users.values():
                    watched.timer.dispose()

            def fail(error: Exception) -> None:
                stop()
                observer.on_error(error)

            def on_error(error: Exception) -> None:
                with lock:
                    if not stopped:
                        fail(error)

            def on_completed() -> None:
                with lock:
                    if stopped:
                        return
                    stop()
                    try:
                        out = [value for w in users.values() for value in w.state.flush()]
                    except Exception as error:
                        observer.on_error(error)
                        return
                    emit(out)
                    observer.on_completed()

            def release() -> None:
                with lock:
                    stop()

            subscription = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler_)
            return CompositeDisposable(subscription, Disposable(release))

        return Observable(subscribe)

    return operator


def frames_of(item: PcmChunk | AudioGap, hangover_frames: int) -> int:
    """How many quiet frames a gap marker stands for (more than the hangover changes nothing)."""
    return min(item.count, hangover_frames) if isinstance(item, AudioGap) else 1


class _UserActivity:
    """One user's detector and the times of its recent frames."""

    __slots__ = ("detector", "end", "end_time", "recent", "ssrc", "user_id")

    def __init__(self, detector: VoiceActivityDetector, user_id: str | None) -> None:
        self.detector = detector
        self.user_id = user_id
        self.ssrc: int | None = None
        # (frame index, RTP timestamp, call time) of the frames an event can point back to.
        self.recent: deque[tuple[int, int, float]] = deque(
            maxlen=max(detector.start_frames, detector.hangover_frames) + 1
        )
        self.end = 0  # RTP timestamp just after the last frame fed
        self.end_time = 0.0  # and its call time

    @property
    def speaking(self) -> bool:
        return self.detector.speaking

    def push(self, item: PcmChunk | AudioGap) -> list[VoiceActivityChange]:
        self.ssrc = item.ssrc
        changes: list[VoiceActivityChange | None] = []
        if isinstance(item, AudioGap):
            # Each missing packet is a quiet frame.
            for k in range(frames_of(item, self.detector.hangover_frames)):
                ts = ts_add(item.timestamp, k * SAMPLES_PER_FRAME)
                time = self.end_time + ts_diff(ts, self.end) / RTP_RATE
                changes.append(self._feed(None, ts, SAMPLES_PER_FRAME, time))
        else:
            length = item.samples * RTP_RATE // item.sample_rate
            # Concealed audio is a guess for a missing packet: quiet.
            pcm = None if item.concealed else item.pcm
            changes.append(self._feed(pcm, item.timestamp, length, item.time))
        return [c for c in changes if c is not None]

    def silence(self) -> list[VoiceActivityChange]:
        self.detector.reset()  # frame indexes restart from 0
        self.recent.clear()
        return [VoiceActivityChange(self.user_id, self.ssrc, False, self.end, self.end_time)]

    def flush(self) -> list[VoiceActivityChange]:
        return []

    def _feed(
        self, pcm: PcmArray | None, timestamp: int, length: int, time: float
    ) -> VoiceActivityChange | None:
        """Feed one frame (``None``: known quiet) of ``length`` RTP units from ``timestamp``."""
        self.recent.append((self.detector.frames, timestamp, time))
        self.end = ts_add(timestamp, length)
        self.end_time = time + length / RTP_RATE
        change = self.detector.update_silence() if pcm is None else self.detector.update(pcm)
        return self._event(change)

    def _event(self, change: VoiceActivity | None) -> VoiceActivityChange | None:
        if change is None:
            return None
        timestamp, time = next(
            ((ts, t) for i, ts, t in self.recent if i == change.frame), (self.end, self.end_time)
        )
        return VoiceActivityChange(self.user_id, self.ssrc, change.speaking, timestamp, time)


def voice_activity_(
    threshold_dbfs: float,
    start_frames: int,
    hangover_frames: int,
    silence_timeout: float | None,
    scheduler: abc.SchedulerBase | None,
) -> Callable[[Observable[PcmChunk | AudioGap]], Observable[VoiceActivityChange]]:
    VoiceActivityDetector(start_frames=start_frames, hangover_frames=hangover_frames)
    timeout = hangover_frames * FRAME_DURATION if silence_timeout is None else silence_timeout

    def new(item: PcmChunk | AudioGap) -> _UserActivity:
        detector = VoiceActivityDetector(
            threshold_dbfs=threshold_dbfs,
            start_frames=start_frames,
            hangover_frames=hangover_frames,
        )
        return _UserActivity(detector, item.user_id)

    return per_speaker(new, timeout, scheduler)


__all__ = ["SpeechState", "frames_of", "per_speaker", "voice_activity_"]
