"""The ``trim_silence`` operator: each user's leading and trailing silence removed."""

from __future__ import annotations

import threading
from collections.abc import Callable

from reactivex import Observable, abc

from rxvoice.audio.dsp import trim_silence
from rxvoice.errors import UsageError
from rxvoice.events import PcmChunk
from rxvoice.operators._common import PcmArray, StreamKey, stream_key
from rxvoice.protocol.seq import ts_add

_RTP_RATE = 48_000


class _UserSilence:
    """What one user's stream holds back until it knows whether sound follows."""

    __slots__ = ("last_loud", "quiet", "quiet_samples", "started")

    def __init__(self) -> None:
        self.started = False
        self.last_loud: PcmChunk | None = None  # its trailing silence may need trimming
        self.quiet: list[PcmChunk] = []  # silence after it: kept only if sound follows
        self.quiet_samples = 0


def _slice(chunk: PcmChunk, start: int, stop: int) -> PcmChunk:
    return PcmChunk(
        chunk.user_id,
        chunk.ssrc,
        ts_add(chunk.timestamp, start * _RTP_RATE // chunk.sample_rate),
        chunk.pcm[start:stop],
        chunk.sample_rate,
        chunk.concealed,
        chunk.recovered,
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

    def operator(source: Observable[PcmChunk]) -> Observable[PcmChunk]:
        def subscribe(
            observer: abc.ObserverBase[PcmChunk],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            lock = threading.RLock()
            users: dict[StreamKey, _UserSilence] = {}

            def on_next(chunk: PcmChunk) -> None:
                with lock:
                    state = users.setdefault(stream_key(chunk), _UserSilence())
                    span = loud_span(chunk.pcm) if chunk.samples else None
                    if span is None:
                        if state.started:
                            limit = None if max_pause is None else max_pause * chunk.sample_rate
                            if limit is None or state.quiet_samples + chunk.samples <= limit:
                                state.quiet.append(chunk)
                                state.quiet_samples += chunk.samples
                        return
                    if not state.started:
                        state.started = True
                        state.last_loud = _slice(chunk, span[0], chunk.samples)
                        return
                    if state.last_loud is not None:
                        observer.on_next(state.last_loud)
                    for quiet in state.quiet:
                        observer.on_next(quiet)
                    state.quiet.clear()
                    state.quiet_samples = 0
                    state.last_loud = chunk

            def on_completed() -> None:
                with lock:
                    for state in users.values():
                        last = state.last_loud
                        if last is not None:
                            span = loud_span(last.pcm)
                            if span is not None:
                                observer.on_next(_slice(last, 0, span[1]))
                    users.clear()
                    observer.on_completed()

            return source.subscribe(on_next, observer.on_error, on_completed, scheduler=scheduler)

        return Observable(subscribe)

    return operator


__all__ = ["trim_silence_"]
