"""The ``trim_silence`` operator: each user's leading and trailing silence removed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

from reactivex import Observable

from rxvoice.audio.dsp import trim_silence
from rxvoice.errors import UsageError
from rxvoice.events import PcmChunk
from rxvoice.operators._common import RTP_RATE, PcmArray, per_stream
from rxvoice.protocol.seq import ts_add


class _Trimmer:
    """One user's stream, holding back what it cannot yet tell is trailing silence.

    Audio is released one loud chunk late: the silence after a loud chunk is
    kept only if sound follows, and the last loud chunk is trimmed at the end.
    """

    __slots__ = ("_last_loud", "_loud_span", "_max_pause", "_quiet", "_quiet_samples", "_started")

    def __init__(
        self,
        loud_span: Callable[[PcmArray], tuple[int, int] | None],
        max_pause: float | None,
    ) -> None:
        self._loud_span = loud_span
        self._max_pause = max_pause
        self._started = False
        self._last_loud: PcmChunk | None = None  # its trailing silence may need trimming
        self._quiet: list[PcmChunk] = []  # silence after it: kept only if sound follows
        self._quiet_samples = 0

    def push(self, chunk: PcmChunk) -> Iterator[PcmChunk]:
        span = self._loud_span(chunk.pcm) if chunk.samples else None
        if span is None:
            if self._started:
                pause = self._max_pause
                limit = None if pause is None else pause * chunk.sample_rate
                if limit is None or self._quiet_samples + chunk.samples <= limit:
                    self._quiet.append(chunk)
                    self._quiet_samples += chunk.samples
            return
        if not self._started:
            self._started = True
            self._last_loud = _slice(chunk, span[0], chunk.samples)
            return
        if self._last_loud is not None:
            yield self._last_loud
        yield from self._quiet
        self._quiet.clear()
        self._quiet_samples = 0
        self._last_loud = chunk

    def flush(self) -> Iterator[PcmChunk]:
        last = self._last_loud
        span = self._loud_span(last.pcm) if last is not None else None
        if last is not None and span is not None:
            yield _slice(last, 0, span[1])


def _slice(chunk: PcmChunk, start: int, stop: int) -> PcmChunk:
    later = ts_add(chunk.timestamp, start * RTP_RATE // chunk.sample_rate)
    return replace(
        chunk,
        timestamp=later,
        pcm=chunk.pcm[start:stop],
        time=chunk.time + start / chunk.sample_rate,
    )


def trim_silence_(
    threshold_dbfs: float, window: int, max_pause: float | None
) -> Callable[[Observable[PcmChunk]], Observable[PcmChunk]]:
    if window < 1:
        raise UsageError(f"window must be >= 1, got {window}")

    def loud_span(pcm: PcmArray) -> tuple[int, int] | None:
        kept = trim_silence(pcm, threshold_dbfs, window=window)
        if kept.shape[0] == 0:
            return None
        # trim_silence returns a view: its offset in the chunk is where sound starts.
        start = (kept.ctypes.data - pcm.ctypes.data) // pcm.strides[0] if pcm.strides[0] else 0
        return start, start + kept.shape[0]

    return per_stream(lambda _: _Trimmer(loud_span, max_pause))


__all__ = ["trim_silence_"]
