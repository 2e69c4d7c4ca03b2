"""Packet builders and audio checks for tests of voice pipelines.

Build what a pipeline receives: RTP frames (:func:`audio_frame`), encrypted
datagrams (:func:`encrypted_datagram`) and real Opus payloads of a tone per
speaker (:func:`opus_tone`); and check what it produced:
:func:`dominant_frequency` of decoded audio, :func:`concat` of chunks,
:func:`read_wav`.

Frames are numbered by an *unwrapped* index ``n``: the sequence number is
``n % 65536`` and the timestamp ``n * 960 % 2**32``, so ``65535`` then
``65536`` is a wraparound with a continuous timestamp.

Example:
    >>> from rxvoice.testing.packets import ToneSpeaker, audio_frame
    >>> alice = ToneSpeaker("1001", ssrc=1, frequency=440.0)
    >>> frame = audio_frame(65536, alice)
    >>> frame.sequence, frame.timestamp
    (0, 62914560)
"""

from __future__ import annotations

import functools
import os
import wave
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rxvoice.audio.opus import OpusEncoder
from rxvoice.events import AudioFrame, PcmChunk
from rxvoice.protocol.crypto import TransportCipher
from rxvoice.protocol.rtp import SILENCE_FRAME, build_header

__all__ = [
    "FRAME_SAMPLES",
    "SILENCE_FRAME",
    "ToneSpeaker",
    "audio_frame",
    "concat",
    "dominant_frequency",
    "encrypted_datagram",
    "opus_tone",
    "read_wav",
    "rtp_frame",
    "tone_pcm",
]

PcmArray = npt.NDArray[np.int16]

FRAME_SAMPLES = 960
"""Samples per channel in a 20 ms frame at 48 kHz; also the RTP timestamp step."""

_RATE = 48_000
# Tones loop every second: an integral frequency then has a whole number of
# periods per loop, so the loop is seamless.
_LOOP_FRAMES = 50


@dataclass(frozen=True, slots=True)
class ToneSpeaker:
    """A simulated sender: who, on which SSRC, and the tone they send.

    Attributes:
        user_id: The user id frames are attributed to.
        ssrc: The RTP SSRC of their packets.
        frequency: The sine tone (Hz, best integral) of their Opus payloads.
    """

    user_id: str
    ssrc: int
    frequency: float = 440.0


def tone_pcm(frequency: float, index: int, *, amplitude: float = 0.3) -> PcmArray:
    """Return the ``index``-th 20 ms stereo frame of a continuous sine.

    Args:
        frequency: The tone in Hz.
        index: Which frame (the phase continues from frame to frame).
        amplitude: Peak level, as a fraction of full scale.

    Returns:
        int16 samples shaped ``(960, 2)``.
    """
    t = (index * FRAME_SAMPLES + np.arange(FRAME_SAMPLES)) / _RATE
    mono = (amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)
    return np.repeat(mono[:, None], 2, axis=1)


@functools.lru_cache(maxsize=64)
def _tone_loop(frequency: float, fec: bool) -> tuple[bytes, ...]:
    # One encoder over the whole loop, as a real sender would encode it; voip
    # with expected loss makes libopus add in-band FEC (SILK) to the packets.
    if fec:
        encoder = OpusEncoder(application="voip", bitrate=32_000, fec=True, packet_loss_percent=30)
    else:
        encoder = OpusEncoder()
    with encoder:
        return tuple(encoder.encode(tone_pcm(frequency, i)) for i in range(_LOOP_FRAMES))


def opus_tone(frequency: float, index: int, *, fec: bool = True) -> bytes:
    """Return a real Opus packet: frame ``index`` of a sine at ``frequency``.

    Packets are encoded once per tone (a one-second loop, cached), so
    building thousands of frames is cheap. With ``fec`` most packets carry
    in-band FEC data for the frame before them
    (:func:`rxvoice.audio.opus.packet_has_fec` tells which).

    Args:
        frequency: The tone in Hz (integral values loop seamlessly).
        index: The frame index; the tone loops every 50 frames.
        fec: Encode as speech with FEC (SILK, 32 kbit/s), else as music (CELT).

    Returns:
        The Opus packet.

    Raises:
        OpusUnavailable: If libopus is not installed.
    """
    return _tone_loop(float(frequency), fec)[index % _LOOP_FRAMES]


def rtp_frame(n: int, ssrc: int, payload: bytes, *, marker: bool = False) -> bytes:
    """Return a plain RTP packet (12-byte header + payload) for frame ``n``.

    Args:
        n: The unwrapped frame index (sequence ``n % 65536``, timestamp
            ``n * 960 % 2**32``).
        ssrc: The SSRC.
        payload: The Opus payload.
        marker: The RTP marker bit.

    Returns:
        The packet bytes, the layout of :attr:`rxvoice.events.AudioFrame.frame`.
    """
    header = build_header(n % 65536, n * FRAME_SAMPLES % (1 << 32), ssrc, marker=marker)
    return header + payload


def audio_frame(
    n: int,
    speaker: ToneSpeaker,
    payload: bytes | None = None,
    *,
    received_at: float = 0.0,
) -> AudioFrame:
    """Build the :class:`~rxvoice.events.AudioFrame` of ``speaker``'s frame ``n``.

    Args:
        n: The unwrapped frame index (see the module docstring).
        speaker: Who sends it.
        payload: The Opus payload; ``None`` for the speaker's tone
            (:func:`opus_tone`), :data:`SILENCE_FRAME` for silence.
        received_at: The arrival time to record.

    Returns:
        The frame.
    """
    if payload is None:
        payload = opus_tone(speaker.frequency, n)
    return AudioFrame(
        speaker.user_id,
        speaker.ssrc,
        n % 65536,
        n * FRAME_SAMPLES % (1 << 32),
        payload,
        received_at,
    )


def encrypted_datagram(
    cipher: TransportCipher,
    n: int,
    ssrc: int,
    payload: bytes,
    *,
    nonce: int | None = None,
) -> bytes:
    """Build the datagram a sender puts on the wire for frame ``n`` (transport-encrypted).

    Args:
        cipher: The session's transport cipher.
        n: The unwrapped frame index.
        ssrc: The SSRC.
        payload: The (possibly DAVE-encrypted) Opus payload.
        nonce: The 32-bit nonce; defaults to ``n % 2**32 + 1``.

    Returns:
        ``header ‖ ciphertext ‖ tag ‖ nonce``, as :meth:`TransportCipher.open` expects.
    """
    header = build_header(n % 65536, n * FRAME_SAMPLES % (1 << 32), ssrc)
    return cipher.seal(header, payload, (n + 1) % (1 << 32) if nonce is None else nonce)


def concat(chunks: Iterable[PcmChunk]) -> PcmArray:
    """Join the audio of ``chunks`` (all of one layout) into one array.

    Returns:
        int16 samples shaped ``(samples, channels)``; empty ``(0, 2)`` for no chunks.
    """
    arrays = [c.pcm for c in chunks]
    if not arrays:
        return np.zeros((0, 2), np.int16)
    return np.concatenate(arrays)


def dominant_frequency(pcm: PcmArray, sample_rate: int = _RATE) -> float:
    """Return the frequency with the most energy (FFT peak of the channel mean).

    Args:
        pcm: int16 samples, 1-D or ``(samples, channels)``.
        sample_rate: Its rate in Hz.

    Returns:
        The peak frequency in Hz (resolution ``sample_rate / len(pcm)``);
        0.0 for silence or an empty array.
    """
    x = pcm.reshape(pcm.shape[0], -1).astype(np.float64).mean(axis=1)
    if x.size == 0 or not np.any(x):
        return 0.0
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * sample_rate / x.size)


def read_wav(path: str | os.PathLike[str]) -> tuple[PcmArray, int]:
    """Read a 16-bit PCM WAV file.

    Args:
        path: The file.

    Returns:
        ``(samples shaped (frames, channels), sample_rate)``.
    """
    with wave.open(os.fspath(path), "rb") as reader:
        channels = reader.getnchannels()
        rate = reader.getframerate()
        data = reader.readframes(reader.getnframes())
    pcm = np.frombuffer(data, "<i2").astype(np.int16).reshape(-1, channels)
    return pcm, rate
