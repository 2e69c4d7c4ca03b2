"""The ``levels`` operator: RMS and dBFS of every chunk."""

from __future__ import annotations

from collections.abc import Callable

from reactivex import Observable
from reactivex import operators as ops

from rxvoice.audio.dsp import dbfs, rms
from rxvoice.events import AudioLevel, PcmChunk


def levels_(floor: float) -> Callable[[Observable[PcmChunk]], Observable[AudioLevel]]:
    def level(chunk: PcmChunk) -> AudioLevel:
        return AudioLevel(
            chunk.user_id,
            chunk.ssrc,
            chunk.timestamp,
            rms(chunk.pcm),
            dbfs(chunk.pcm, floor=floor),
            chunk.time,
        )

    return ops.map(level)


__all__ = ["levels_"]
