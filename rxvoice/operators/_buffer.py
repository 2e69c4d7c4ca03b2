"""The ``buffer_duration`` operator: each user's PCM re-cut into chunks of a fixed duration."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
from reactivex import Observable

from rxvoice.errors import UsageError
from rxvoice.events import PcmChunk
from rxvoice.operators._common import RTP_RATE, per_stream
from rxvoice.protocol.seq import ts_add


class _Rechunker:
    """One user's audio, re-cut into chunks of ``seconds`` seconds."""

    __slots__ = ("parts", "samples", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.parts: list[PcmChunk] = []
        self.samples = 0

    def push(self, chunk: PcmChunk) -> Iterator[PcmChunk]:
        if self.parts and (
            self.parts[0].sample_rate != chunk.sample_rate
            or self.parts[0].channels != chunk.channels
        ):
            # A format change cannot be joined: emit what is held first.
            yield from self.flush()
        if chunk.samples == 0:
            return
        self.parts.append(chunk)
        self.samples += chunk.samples
        size = max(1, round(chunk.sample_rate * self.seconds))
        while self.samples >= size:
            yield self._take(size)

    def flush(self) -> Iterator[PcmChunk]:
        if self.samples:
            yield self._take(self.samples)

    def _take(self, count: int) -> PcmChunk:
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
            taken.append(replace(part, pcm=part.pcm[:need]))
            later = ts_add(part.timestamp, need * RTP_RATE // part.sample_rate)
            self.parts[0] = replace(
                part,
                timestamp=later,
                pcm=part.pcm[need:],
                time=part.time + need / part.sample_rate,
            )
            need = 0
        self.samples -= count - need
        pcm = taken[0].pcm if len(taken) == 1 else np.concatenate([t.pcm for t in taken])
        return replace(
            first,
            pcm=pcm,
            concealed=any(t.concealed for t in taken),
            recovered=any(t.recovered for t in taken),
        )


def buffer_duration_(seconds: float) -> Callable[[Observable[PcmChunk]], Observable[PcmChunk]]:
    if not seconds > 0:
        raise UsageError(f"seconds must be positive, got {seconds}")
    return per_stream(lambda _: _Rechunker(seconds))


__all__ = ["buffer_duration_"]
