"""The ``voice_activity`` operator: speech start/stop per user, from energy and missing packets."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

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


class _UserActivity:
    """One user's detector, the times of its recent frames and its silence timer."""

    __slots__ = (
        "armed",
        "detector",
        "end",
        "end_time",
        "last_seen",
        "recent",
        "ssrc",
        "timer",
        "user_id",
    )

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
        self.timer = SerialDisposable()
        self.armed = False  # a silence check is scheduled
        self.last_seen = 0.0  # scheduler time of the user's last item

    def time_of(self, timestamp: int) -> float:
        """The call time of a timestamp after the last frame fed (for gap markers)."""
        return self.end_time + ts_diff(timestamp, self.end) / RTP_RATE

    def feed(
        self, pcm: PcmArray | None, timestamp: int, length: int, time: float
    ) -> VoiceActivityChange | None:
        """Feed one frame (``None``: known quiet) of ``length`` RTP units from ``timestamp``."""
        self.recent.append((self.detector.frames, timestamp, time))
        self.end = ts_add(timestamp, length)
        self.end_time = time + length / RTP_RATE
        change = self.detector.update_silence() if pcm is None else self.detector.update(pcm)
        return self._event(change)

    def stopped(self) -> VoiceActivityChange:
        """The event of speech ending after the last frame fed."""
        return VoiceActivityChange(self.user_id, self.ssrc, False, self.end, self.end_time)

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

    def operator(source: Observable[PcmChunk | AudioGap]) -> Observable[VoiceActivityChange]:
        def subscribe(
            observer: abc.ObserverBase[VoiceActivityChange],
            scheduler_: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            clock = choose_scheduler(scheduler, scheduler_)
            lock = threading.RLock()
            users: dict[StreamKey, _UserActivity] = {}
            stopped = False

            def state_for(item: PcmChunk | AudioGap) -> _UserActivity:
                key = stream_key(item)
                state = users.get(key)
                if state is None:
                    detector = VoiceActivityDetector(
                        threshold_dbfs=threshold_dbfs,
                        start_frames=start_frames,
                        hangover_frames=hangover_frames,
                    )
                    state = users[key] = _UserActivity(detector, item.user_id)
                state.ssrc = item.ssrc
                return state

            def check_silence(_: abc.SchedulerBase, state: Any) -> None:
                # No packets at all: Discord clients stop sending when quiet.
                with lock:
                    state.armed = False
                    if stopped or not state.detector.speaking:
                        return
                    # One timer per timeout period, not one per chunk: re-arm
                    # for the rest of the period if the user sent meanwhile.
                    remaining = state.last_seen + timeout - now_of(clock)
                    if remaining > 1e-9:
                        arm(state, remaining)
                        return
                    state.detector.reset()  # frame indexes restart from 0
                    state.recent.clear()
                    observer.on_next(state.stopped())

            def on_next(item: PcmChunk | AudioGap) -> None:
                with lock:
                    if stopped:
                        return
                    state = state_for(item)
                    changes: list[VoiceActivityChange | None] = []
                    if isinstance(item, AudioGap):
                        # Each missing packet is a quiet frame; more than the
                        # hangover cannot change the outcome.
                        for k in range(min(item.count, hangover_frames)):
                            ts = ts_add(item.timestamp, k * SAMPLES_PER_FRAME)
                            time = state.time_of(ts)
                            changes.append(state.feed(None, ts, SAMPLES_PER_FRAME, time))
                    else:
                        length = item.samples * RTP_RATE // item.sample_rate
                        # Concealed audio is a guess for a missing packet: quiet.
                        pcm = None if item.concealed else item.pcm
                        changes.append(state.feed(pcm, item.timestamp, length, item.time))
                    for change in changes:
                        if change is not None:
                            observer.on_next(change)
                    state.last_seen = now_of(clock)
                    if state.detector.speaking and not state.armed:
                        arm(state, timeout)

            def arm(state: _UserActivity, delay: float) -> None:
                state.armed = True
                state.timer.disposable = clock.schedule_relative(delay, check_silence, state)

            def stop() -> None:
                nonlocal stopped
                stopped = True
                for state in users.values():
                    state.timer.dispose()

            def on_error(error: Exception) -> None:
                with lock:
                    stop()
                    observer.on_error(error)

            def on_completed() -> None:
                with lock:
                    stop()
                    observer.on_completed()

            def release() -> None:
                with lock:
                    stop()

            subscription = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler_)
            return CompositeDisposable(subscription, Disposable(release))

        return Observable(subscribe)

    return operator


__all__ = ["voice_activity_"]
