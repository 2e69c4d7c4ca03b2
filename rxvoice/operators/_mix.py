"""The ``mix`` operator: every user's chunks summed into 20 ms ticks timed by the scheduler."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, SerialDisposable

from rxvoice.audio.mixer import Mixer
from rxvoice.errors import UsageError
from rxvoice.events import PcmChunk
from rxvoice.operators._common import RTP_RATE, StreamKey, choose_scheduler, now_of, stream_key

_TS_MOD = 1 << 32
PRUNE_EVERY = 50
"""Ticks between two sweeps of the sources gone quiet (users who left, old SSRCs)."""


def mix_(
    interval: float,
    delay: float,
    sample_rate: int,
    channels: int,
    max_ahead: int,
    scheduler: abc.SchedulerBase | None,
) -> Callable[[Observable[PcmChunk]], Observable[PcmChunk]]:
    frame_samples = round(sample_rate * interval)
    step = round(RTP_RATE * interval)
    if interval <= 0 or frame_samples < 1 or delay < 0:
        raise UsageError("interval must be positive and delay non-negative")
    Mixer[Any](frame_samples=frame_samples, channels=channels, max_ahead=max_ahead)

    def operator(source: Observable[PcmChunk]) -> Observable[PcmChunk]:
        def subscribe(
            observer: abc.ObserverBase[PcmChunk],
            scheduler_: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            clock = choose_scheduler(scheduler, scheduler_)
            lock = threading.RLock()
            # Keyed by user *and* SSRC: RTP timestamps only compare within one
            # SSRC, so a user's new SSRC is a new source, anchored afresh.
            mixer: Mixer[tuple[StreamKey, int | None]] = Mixer(
                frame_samples=frame_samples,
                channels=channels,
                timestamp_step=step,
                max_ahead=max_ahead,
            )
            timer = SerialDisposable()
            start: float | None = None  # when tick 0 is due
            source_done = False
            stopped = False

            def finish(error: Exception | None = None) -> None:
                nonlocal stopped
                stopped = True
                timer.dispose()
                if error is None:
                    observer.on_completed()
                else:
                    observer.on_error(error)

            def arm() -> None:
                assert start is not None
                # Due times from tick 0 and the tick index: no drift accumulates.
                due = start + mixer.tick * interval
                timer.disposable = clock.schedule_relative(max(0.0, due - now_of(clock)), on_tick)

            def on_tick(_: abc.SchedulerBase, __: Any = None) -> None:
                with lock:
                    if stopped:
                        return
                    tick = mixer.tick
                    assert start is not None
                    pcm = mixer.mix()
                    if tick % PRUNE_EVERY == 0:
                        mixer.prune(max_ahead)
                    observer.on_next(
                        PcmChunk(
                            None,
                            None,
                            tick * step % _TS_MOD,
                            pcm,
                            sample_rate,
                            time=start + tick * interval,
                        )
                    )
                    if source_done and not any(mixer.queued(s) for s in mixer.sources):
                        finish()
                        return
                    arm()

            def on_next(chunk: PcmChunk) -> None:
                nonlocal start
                with lock:
                    if stopped:
                        return
                    if chunk.sample_rate != sample_rate:
                        finish(
                            UsageError(
                                f"mix expects {sample_rate} Hz chunks, got {chunk.sample_rate} Hz"
                            )
                        )
                        return
                    try:
                        key = (stream_key(chunk), chunk.ssrc)
                        mixer.add(key, chunk.pcm, timestamp=chunk.timestamp)
                    except UsageError as error:
                        finish(error)
                        return
                    if start is None:
                        start = now_of(clock) + delay
                        arm()

            def on_error(error: Exception) -> None:
                with lock:
                    if not stopped:
                        finish(error)

            def on_completed() -> None:
                nonlocal source_done
                with lock:
                    source_done = True
                    if start is None and not stopped:
                        finish()

            subscription = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler_)
            return CompositeDisposable(subscription, timer)

        return Observable(subscribe)

    return operator


__all__ = ["mix_"]
