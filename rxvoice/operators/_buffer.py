"""The ``buffer_duration`` operator: each user's PCM re-cut into chunks of a fixed duration."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from reactivex import Observable, abc

from rxvoice.errors import UsageError
from rxvoice.events import PcmChunk
from rxvoice.operators._common import PcmArray, StreamKey, stream_key
from rxvoice.protocol.seq import ts_add

_RTP_RATE = 48_000


class _Pending:
    """The not yet emitted audio of one user."""

    __slots__ = ("parts", "samples")

    def __init__(self) -> None:
        self.parts: list[PcmChunk] = []
        self.samples = 0

    def take(self, count: int) -> PcmChunk:
        """Remove and return the first ``count`` samples (all if fewer) as one chunk."""
        first = self.parts[0]
        taken: list[PcmChunk] = []
        need = count
        while need and self.parts:
            part = self.parts[0]
            if part.samples <= need:
                taken.append(self.parts.pop(0))
                need -= part.samples
                continue
            head, tail = part.pcm[:need], part.pcm[need:]
            taken.append(_with_pcm(part, part.timestamp, head))
            self.parts[0] = _with_pcm(
                part, ts_add(part.timestamp, need * _RTP_RATE // part.sample_rate), tail
            )
            need = 0
        self.samples -= count - need
        pcm = taken[0].pcm if len(taken) == 1 else np.concatenate([t.pcm for t in taken])
        return PcmChunk(
            first.user_id,
            first.ssrc,
            first.timestamp,
            pcm,
            first.sample_rate,
            any(t.concealed for t in taken),
            any(t.recovered for t in taken),
        )


def _with_pcm(chunk: PcmChunk, timestamp: int, pcm: PcmArray) -> PcmChunk:
    return PcmChunk(
        chunk.user_id,
        chunk.ssrc,
        timestamp,
        pcm,
        chunk.sample_rate,
        chunk.concealed,
        chunk.recovered,
    )


def buffer_duration_(ms: float) -> Callable[[Observable[PcmChunk]], Observable[PcmChunk]]:
    if not ms > 0:
        raise UsageError(f"ms must be positive, got {ms}")

    def operator(source: Observable[PcmChunk]) -> Observable[PcmChunk]:
        def subscribe(
            observer: abc.ObserverBase[PcmChunk],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            lock = threading.RLock()
            pending: dict[StreamKey, _Pending] = {}

            def on_next(chunk: PcmChunk) -> None:
                with lock:
                    key = stream_key(chunk)
                    waiting = pending.get(key)
                    if waiting is None:
                        waiting = pending[key] = _Pending()
                    elif waiting.parts and (
                        waiting.parts[0].sample_rate != chunk.sample_rate
                        or waiting.parts[0].channels != chunk.channels
                    ):
                        # A format change cannot be joined: emit what is held first.
                        observer.on_next(waiting.take(waiting.samples))
                    if chunk.samples == 0:
                        return
                    waiting.parts.append(chunk)
                    waiting.samples += chunk.samples
                    size = max(1, round(chunk.sample_rate * ms / 1000))
                    while waiting.samples >= size:
                        observer.on_next(waiting.take(size))

            def on_completed() -> None:
                with lock:
                    for waiting in pending.values():
                        if waiting.samples:
                            observer.on_next(waiting.take(waiting.samples))
                    pending.clear()
                    observer.on_completed()

            return source.subscribe(on_next, observer.on_error, on_completed, scheduler=scheduler)

        return Observable(subscribe)

    return operator


__all__ = ["buffer_duration_"]
