"""The ``jitter_buffer`` operator: the receiver's per-SSRC reordering, timed by the scheduler."""

from __future__ import annotations

from collections.abc import Callable

from reactivex import Observable, abc

from rxvoice.events import AudioFrame, AudioGap
from rxvoice.operators._common import drive_receiver
from rxvoice.protocol.receiver import Received, VoiceReceiver


def _push(receiver: VoiceReceiver, frame: AudioFrame, now: float) -> Received:
    return receiver.push(frame, now)


def _emit_ordered(received: Received, observer: abc.ObserverBase[AudioFrame | AudioGap]) -> None:
    for item in received.ordered:
        observer.on_next(item)


def jitter_buffer_(
    latency: float,
    capacity: int,
    max_latency: float | None,
    scheduler: abc.SchedulerBase | None,
) -> Callable[[Observable[AudioFrame]], Observable[AudioFrame | AudioGap]]:
    def new() -> VoiceReceiver:
        return VoiceReceiver(latency=latency, capacity=capacity, max_latency=max_latency)

    new()  # a bad argument raises UsageError here, not at subscription
    return drive_receiver(new, _push, _emit_ordered, scheduler=scheduler)


__all__ = ["jitter_buffer_"]
