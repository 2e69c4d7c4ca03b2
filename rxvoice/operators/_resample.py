"""The ``resample`` operator: each user's audio converted to another rate, statefully."""

from __future__ import annotations

import threading
from collections.abc import Callable

from reactivex import Observable, abc

from rxvoice.audio.dsp import Resampler
from rxvoice.errors import UsageError
from rxvoice.events import PcmChunk
from rxvoice.operators._common import PcmArray, StreamKey, stream_key
from rxvoice.protocol.seq import ts_add

_RTP_RATE = 48_000


class _StreamResampler:
    """One user's resampler, with the filter delay removed so output stays time-aligned."""

    __slots__ = ("_consumed", "_emitted", "_last", "_resampler", "_skip", "from_rate", "layout")

    def __init__(self, first: PcmChunk, to_rate: int) -> None:
        self.from_rate = first.sample_rate
        self.layout = (first.sample_rate, first.channels)
        self._resampler = Resampler(first.sample_rate, to_rate)
        self._skip = self._resampler.delay
        self._consumed = 0  # input samples processed
        self._emitted = 0  # output samples emitted
        self._last = first

    def process(self, chunk: PcmChunk) -> PcmChunk | None:
        out = self._resampler.process(chunk.pcm.reshape(chunk.samples, chunk.channels))
        # Where the first output sample to emit sits in the input, relative to
        # this chunk's first sample: a little before it, by the filter delay.
        offset = self._emitted * self.from_rate / self._resampler.to_rate - self._consumed
        self._consumed += chunk.samples
        self._last = chunk
        return self._emit(out, chunk, offset)

    def flush(self) -> PcmChunk | None:
        """Emit the tail the filter still holds; the total is then ``ceil(n * to / from)``."""
        if self._consumed == 0:
            return None
        to_rate = self._resampler.to_rate
        wanted = -(-self._consumed * to_rate // self.from_rate) - self._emitted
        tail = self._resampler.flush()
        if tail.ndim == 1:
            tail = tail.reshape(-1, 1)
        chunk = self._last
        offset = self._emitted * self.from_rate / to_rate - (self._consumed - chunk.samples)
        return self._emit(tail, chunk, offset, limit=wanted)

    def _emit(
        self, out: PcmArray, chunk: PcmChunk, offset: float, limit: int | None = None
    ) -> PcmChunk | None:
        if self._skip:
            drop = min(self._skip, out.shape[0])
            out = out[drop:]
            self._skip -= drop
        if limit is not None:
            out = out[: max(limit, 0)]
        if out.shape[0] == 0:
            return None
        self._emitted += out.shape[0]
        timestamp = ts_add(chunk.timestamp, round(offset * _RTP_RATE / self.from_rate))
        return PcmChunk(
            chunk.user_id,
            chunk.ssrc,
            timestamp,
            out,
            self._resampler.to_rate,
            chunk.concealed,
            chunk.recovered,
        )


def resample_(to_rate: int) -> Callable[[Observable[PcmChunk]], Observable[PcmChunk]]:
    if to_rate < 1:
        raise UsageError(f"to_rate must be positive, got {to_rate}")

    def operator(source: Observable[PcmChunk]) -> Observable[PcmChunk]:
        def subscribe(
            observer: abc.ObserverBase[PcmChunk],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            lock = threading.RLock()
            streams: dict[StreamKey, _StreamResampler] = {}

            def on_next(chunk: PcmChunk) -> None:
                with lock:
                    if chunk.sample_rate == to_rate:
                        observer.on_next(chunk)
                        return
                    key = stream_key(chunk)
                    stream = streams.get(key)
                    if stream is not None and stream.layout != (chunk.sample_rate, chunk.channels):
                        # The format changed: finish the old stream, start anew.
                        tail = stream.flush()
                        if tail is not None:
                            observer.on_next(tail)
                        stream = None
                    if stream is None:
                        stream = streams[key] = _StreamResampler(chunk, to_rate)
                    try:
                        out = stream.process(chunk)
                    except UsageError as error:
                        observer.on_error(error)
                        return
                    if out is not None:
                        observer.on_next(out)

            def on_completed() -> None:
                with lock:
                    for stream in streams.values():
                        tail = stream.flush()
                        if tail is not None:
                            observer.on_next(tail)
                    streams.clear()
                    observer.on_completed()

            return source.subscribe(on_next, observer.on_error, on_completed, scheduler=scheduler)

        return Observable(subscribe)

    return operator


__all__ = ["resample_"]
