"""The ``jitter_buffer`` operator: per-SSRC reordering with gap markers, timed by the scheduler."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, SerialDisposable

from rxvoice.events import AudioFrame, AudioGap
from rxvoice.operators._common import IdleStreams, choose_scheduler, now_of
from rxvoice.protocol.jitter import JitterBuffer, JitterPacket, Release


def jitter_buffer_(
    latency: float,
    capacity: int,
    max_latency: float | None,
    scheduler: abc.SchedulerBase | None,
) -> Callable[[Observable[AudioFrame]], Observable[AudioFrame | AudioGap]]:
    def make_buffer() -> JitterBuffer[AudioFrame]:
        return JitterBuffer(capacity=capacity, latency=latency, max_latency=max_latency)

    make_buffer()  # a bad argument raises UsageError here, not at subscription

    def operator(source: Observable[AudioFrame]) -> Observable[AudioFrame | AudioGap]:
        def subscribe(
            observer: abc.ObserverBase[AudioFrame | AudioGap],
            scheduler_: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            clock = choose_scheduler(scheduler, scheduler_)
            # Timer callbacks may run on another thread than the source's
            # (e.g. TimeoutScheduler): one lock serialises state and emissions.
            lock = threading.RLock()
            buffers: dict[int, JitterBuffer[AudioFrame]] = {}
            users: dict[int, str] = {}
            idle: IdleStreams[int] = IdleStreams()
            timer = SerialDisposable()
            timer_due: float | None = None
            last_now = float("-inf")
            stopped = False

            def now(at_least: float = float("-inf")) -> float:
                # JitterBuffer wants a clock that never goes backwards, and a
                # timer may fire a float ulp before its due time.
                nonlocal last_now
                last_now = max(last_now, now_of(clock), at_least)
                return last_now

            def emit(ssrc: int, releases: Iterable[Release[AudioFrame]]) -> None:
                for release in releases:
                    if isinstance(release, JitterPacket):
                        observer.on_next(release.item)
                    else:
                        observer.on_next(
                            AudioGap(
                                users.get(ssrc),
                                ssrc,
                                release.sequence,
                                release.count,
                                release.timestamp,
                            )
                        )

            def forget(ssrc: int) -> None:
                if (buffer := buffers.pop(ssrc, None)) is not None:
                    emit(ssrc, buffer.flush())
                users.pop(ssrc, None)

            def arm(at: float) -> None:
                # One timer for all SSRCs, at the earliest deadline.
                nonlocal timer_due
                deadlines = [d for b in buffers.values() if (d := b.next_deadline()) is not None]
                if not deadlines:
                    return
                due = min(deadlines)
                if timer_due is not None and timer_due <= due:
                    return
                timer_due = due
                timer.disposable = clock.schedule_relative(max(0.0, due - at), on_timer, due)

            def on_timer(_: abc.SchedulerBase, due: Any) -> None:
                nonlocal timer_due
                with lock:
                    if stopped:
                        return
                    timer_due = None
                    at = now(float(due))
                    for ssrc, buffer in list(buffers.items()):
                        emit(ssrc, buffer.poll(at))
                    arm(at)

            def on_next(frame: AudioFrame) -> None:
                with lock:
                    if stopped:
                        return
                    at = now()
                    ssrc = frame.ssrc
                    if idle.touch(ssrc, at):
                        forget(ssrc)  # back after a quiet minute: start afresh
                    for gone in idle.expired(at):
                        forget(gone)
                    if frame.user_id is not None:
                        users[ssrc] = frame.user_id
                    buffer = buffers.get(ssrc)
                    if buffer is None:
                        buffer = buffers[ssrc] = make_buffer()
                    emit(ssrc, buffer.push(frame.sequence, frame.timestamp, frame, at))
                    arm(at)

            def on_error(error: Exception) -> None:
                nonlocal stopped
                with lock:
                    stopped = True
                    timer.dispose()
                    observer.on_error(error)

            def on_completed() -> None:
                nonlocal stopped
                with lock:
                    stopped = True
                    timer.dispose()
                    for ssrc, buffer in buffers.items():
                        emit(ssrc, buffer.flush())
                    observer.on_completed()

            subscription = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler_)
            return CompositeDisposable(subscription, timer)

        return Observable(subscribe)

    return operator


__all__ = ["jitter_buffer_"]
