"""The ``resample`` operator: each user's audio converted to another rate, statefully."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

from reactivex import Observable

from rxvoice.audio.dsp import Resampler
from rxvoice.errors import UsageError
from rxvoice.events import PcmChunk
from rxvoice.operators._common import RTP_RATE, PcmArray, per_stream
from rxvoice.protocol.seq import ts_add


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
        timestamp = ts_add(chunk.timestamp, round(offset * RTP_RATE / self.from_rate))
        return replace(
            chunk,
            timestamp=timestamp,
            pcm=out,
            sample_rate=self._resampler.to_rate,
            time=chunk.time + offset / self.from_rate,
        )


class _Converter:
    """One user's stream: resampled while it is at another rate, passed on when not."""

    __slots__ = ("_stream", "_to_rate")

    def __init__(self, to_rate: int) -> None:
        self._to_rate = to_rate
        self._stream: _StreamResampler | None = None

    def push(self, chunk: PcmChunk) -> Iterator[PcmChunk]:
        if chunk.sample_rate == self._to_rate:
            yield chunk
            return
        stream = self._stream
        if stream is not None and stream.layout != (chunk.sample_rate, chunk.channels):
            # The format changed: finish the old stream, start anew.
            yield from self.flush()
            stream = None
        if stream is None:
            stream = self._stream = _StreamResampler(chunk, self._to_rate)
        out = stream.process(chunk)
        if out is not None:
            yield out

    def flush(self) -> Iterator[PcmChunk]:
        stream, self._stream = self._stream, None
        tail = stream.flush() if stream is not None else None
        if tail is not None:
            yield tail


def resample_(to_rate: int) -> Callable[[Observable[PcmChunk]], Observable[PcmChunk]]:
    if to_rate < 1:
        raise UsageError(f"to_rate must be positive, got {to_rate}")
    return per_stream(lambda _: _Converter(to_rate))


__all__ = ["resample_"]
