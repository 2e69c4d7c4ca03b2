"""The ``to_mono`` operator: average the channels of every chunk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from reactivex import Observable
from reactivex import operators as ops

from rxvoice.audio.dsp import to_mono
from rxvoice.events import PcmChunk


def _mono(chunk: PcmChunk) -> PcmChunk:
    if chunk.channels == 1 and chunk.pcm.ndim == 2:
        return chunk
    return replace(chunk, pcm=to_mono(chunk.pcm).reshape(-1, 1))


def to_mono_() -> Callable[[Observable[PcmChunk]], Observable[PcmChunk]]:
    # Stateless, so RxPY's map (which routes exceptions to on_error) is enough.
    return ops.map(_mono)


__all__ = ["to_mono_"]
