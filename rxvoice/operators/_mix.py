"""The ``mix`` operator: every user's chunks summed into 20 ms ticks timed by the scheduler."""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, SerialDisposable

from rxvoice.audio.mixer import Mixer
from rxvoice.errors import UsageError
from rxvoice.events import PcmChunk
from rxvoice.operators._common import RTP_RATE, StreamKey, choose_scheduler, now_of, stream_key
from rxvoice.operators._decode import NEW_SPURT_LATENESS

_TS_MOD = 1 << 32
_STATS = ("late_chunk", "late_spurt", "duplicate_chunk")
PRUNE_EVERY = 50
"""Ticks between two sweeps of the sources gone quiet (users who left, old SSRCs)."""

DEFAULT_DELAY = 0.2
"""Seconds from a chunk's call time to its tick (0.2): what a Connection's audio
can be late by. Its jitter buffer waits ``jitter_latency`` (0.06 s) for a
missing packet, counted from the packet after the loss, so the audio standing
in for a loss of ``n`` frames comes out ``0.06 + n * 0.02`` seconds after its
call time: 0.16 s for the longest loss ``decode_opus`` conceals (5 frames),
plus 0.04 s for network and event-loop jitter."""


def mix_(
    interval: float,
    delay: float,
    sample_rate: int,
    channels: int,
    max_ahead: int,
    stats: Counter[str] | None,
    scheduler: abc.SchedulerBase | None,
) -> Callable[[Observable[PcmChunk]], Observable[PcmChunk]]:
    frame_samples = round(sample_rate * interval)
    step = round(RTP_RATE * interval)
    if not (interval > 0 and frame_samples >= 1 and 0 <= delay < math.inf and max_ahead >= 0):
        raise UsageError("interval must be positive, delay finite and non-negative, max_ahead >= 0")
    # Room for the delay on top of max_ahead: a chunk on time is queued that far ahead.
    queue_ticks = max_ahead + math.ceil(delay / interval)
    Mixer[Any](frame_samples=frame_samples, channels=channels, max_ahead=queue_ticks)

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
                max_ahead=queue_ticks,
                slack=NEW_SPURT_LATENESS / interval,
            )
            timer = SerialDisposable()
            # Tick k holds the audio of call time origin + k * interval and is
            # due at start + k * interval on the scheduler's clock. The two
            # clocks are tied by the first chunk (they may differ: the
            # scheduler may tell wall-clock time, chunks the loop's).
            origin = 0.0
            start: float | None = None
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
                    pcm = mixer.mix()
                    if tick % PRUNE_EVERY == 0:
                        mixer.prune(queue_ticks)
                    observer.on_next(
                        PcmChunk(
                            None,
                            None,
                            tick * step % _TS_MOD,
                            pcm,
                            sample_rate,
                            time=origin + tick * interval,
                        )
                    )
                    if source_done and not any(mixer.queued(s) for s in mixer.sources):
                        finish()
                        return
                    arm()

            reported = (0, 0, 0)

            def report() -> None:
                nonlocal reported
                counts = mixer.stats
                current = (counts.late, counts.late_spurts, counts.duplicates)
                if stats is not None and current != reported:
                    for key, new, old in zip(_STATS, current, reported, strict=True):
                        stats[key] += new - old
                reported = current

            def on_next(chunk: PcmChunk) -> None:
                nonlocal origin, start
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
                    now = now_of(clock)
                    first = start is None
                    if start is None:
                        origin = chunk.time or now
                        start = now + delay
                    # A chunk without a call time is heard when it arrives.
                    time = chunk.time or now - (start - delay - origin)
                    try:
                        key = (stream_key(chunk), chunk.ssrc)
                        mixer.add(
                            key, chunk.pcm, timestamp=chunk.timestamp, at=(time - origin) / interval
                        )
                    except UsageError as error:
                        finish(error)
                        return
                    report()
                    if first:
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


__all__ = ["DEFAULT_DELAY", "mix_"]
