"""Pure audio algorithms: Opus codec, mixing, resampling, levels and voice activity.

No I/O, no asyncio, no reactivex. Importing this package never loads libopus:
only constructing an :class:`OpusDecoder` or :class:`OpusEncoder` does, and it
raises :class:`~rxvoice.errors.OpusUnavailable` when libopus is missing.
"""

from __future__ import annotations

from rxvoice.audio.dsp import (
    Resampler,
    VoiceActivity,
    VoiceActivityDetector,
    dbfs,
    resample,
    rms,
    to_mono,
    trim_silence,
)
from rxvoice.audio.mixer import Mixer, MixerStats, mix_blocks
from rxvoice.audio.opus import (
    CHANNELS,
    FRAME_DURATION,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    SILENCE_FRAME,
    OpusDecoder,
    OpusEncoder,
    opus_available,
    packet_has_fec,
)

__all__ = [
    "CHANNELS",
    "FRAME_DURATION",
    "SAMPLES_PER_FRAME",
    "SAMPLE_RATE",
    "SILENCE_FRAME",
    "Mixer",
    "MixerStats",
    "OpusDecoder",
    "OpusEncoder",
    "Resampler",
    "VoiceActivity",
    "VoiceActivityDetector",
    "dbfs",
    "mix_blocks",
    "opus_available",
    "packet_has_fec",
    "resample",
    "rms",
    "to_mono",
    "trim_silence",
]
