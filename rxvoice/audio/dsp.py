"""Small signal-processing helpers for decoded voice: channels, rates, levels.

Everything works on int16 PCM as decoded by :class:`~rxvoice.audio.opus.OpusDecoder`:
1-D arrays for mono, ``(samples, channels)`` arrays otherwise. Pure numpy; no
state except in :class:`Resampler` and :class:`VoiceActivityDetector`, which
are fed block by block (e.g. one 20 ms frame at a time).

Levels are in dBFS relative to a full-scale *square* wave: a full-scale sine
is -3.01 dBFS; digital silence is ``-inf`` (or the ``floor`` you pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rxvoice.errors import UsageError

__all__ = [
    "Resampler",
    "VoiceActivity",
    "VoiceActivityDetector",
    "dbfs",
    "fundamental_frequency",
    "resample",
    "rms",
    "to_mono",
    "trim_silence",
]

PcmArray = npt.NDArray[np.int16]
_FULL_SCALE = 32768.0
# Kaiser window parameter of the resampling filter: about 80 dB of stopband
# attenuation (Kaiser's formula A = beta / 0.1102 + 8.7).
_KAISER_BETA = 8.0


def to_mono(pcm: PcmArray) -> PcmArray:
    """Average the channels into one.

    Args:
        pcm: int16 samples, ``(samples, channels)`` or already mono (1-D).

    Returns:
        A 1-D int16 array (``pcm`` itself when it is already 1-D).

    Raises:
        UsageError: If ``pcm`` has more than two dimensions.
    """
    if pcm.ndim == 1:
        return pcm
    if pcm.ndim != 2:
        raise UsageError(f"pcm must be 1-D or (samples, channels), got shape {pcm.shape}")
    if pcm.shape[1] == 1:
        return np.array(pcm[:, 0], dtype=np.int16)
    # Sum in int32 so loud in-phase channels cannot overflow before dividing.
    if pcm.shape[1] == 2:  # the common case, 4x faster than a reduction over axis 1
        total: npt.NDArray[np.int32] = pcm[:, 0].astype(np.int32) + pcm[:, 1]
    else:
        total = pcm.sum(axis=1, dtype=np.int32)
    mono: PcmArray = (total // pcm.shape[1]).astype(np.int16)
    return mono


def rms(pcm: PcmArray) -> float:
    """Return the root-mean-square level over all samples and channels.

    Args:
        pcm: int16 samples of any shape.

    Returns:
        The RMS in sample units (0 to 32768); 0.0 for an empty array.
    """
    if pcm.size == 0:
        return 0.0
    x = pcm.reshape(-1).astype(np.float64)
    return math.sqrt(float(x @ x) / x.size)


def dbfs(pcm: PcmArray, *, floor: float = -math.inf) -> float:
    """Return the RMS level in dBFS (0 dBFS = a full-scale square wave).

    Args:
        pcm: int16 samples of any shape.
        floor: The lowest value returned; digital silence (and an empty
            array) gives exactly this. Pass e.g. ``-100.0`` to keep results finite.

    Returns:
        ``20 * log10(rms / 32768)``, at least ``floor``. A full-scale sine
        gives -3.01.
    """
    level = rms(pcm)
    if level == 0.0:
        return floor
    return max(floor, 20.0 * math.log10(level / _FULL_SCALE))


def trim_silence(pcm: PcmArray, threshold_dbfs: float = -50.0, *, window: int = 480) -> PcmArray:
    """Cut leading and trailing silence.

    The signal is judged in windows (480 samples = 10 ms at 48 kHz) so a lone
    click does not count as sound; whole windows are kept.

    Args:
        pcm: int16 samples, 1-D or ``(samples, channels)``.
        threshold_dbfs: Windows below this level are silence.
        window: Window length in samples.

    Returns:
        A view of ``pcm`` from the first to the last window at or above the
        threshold; empty (``pcm[:0]``) if every window is silent.

    Raises:
        UsageError: If ``window`` is not positive.
    """
    if window < 1:
        raise UsageError(f"window must be >= 1, got {window}")
    n = pcm.shape[0]
    if n == 0:
        return pcm
    windows = -(-n // window)
    flat = pcm.reshape(n, -1).astype(np.float64)
    padded = np.zeros((windows * window, flat.shape[1]))
    padded[:n] = flat
    power = (padded.reshape(windows, -1) ** 2).mean(axis=1)
    limit = (_FULL_SCALE * 10.0 ** (threshold_dbfs / 20.0)) ** 2
    loud = np.flatnonzero(power >= limit)
    if loud.size == 0:
        return pcm[:0]
    return pcm[int(loud[0]) * window : min(n, (int(loud[-1]) + 1) * window)]


def _lowpass(length: int, rate: float, nyquist: float) -> npt.NDArray[np.float64]:
    """Design a Kaiser-windowed sinc low-pass whose stopband starts at ``nyquist``."""
    attenuation = _KAISER_BETA / 0.1102 + 8.7
    transition = (attenuation - 8.0) / (2.285 * 2.0 * math.pi * (length - 1)) * rate
    # Centre the transition band just below the target Nyquist frequency.
    cutoff = max(nyquist - transition / 2.0, nyquist / 2.0)
    n = np.arange(length) - (length - 1) / 2.0
    window = np.kaiser(length, _KAISER_BETA)
    h: npt.NDArray[np.float64] = (2.0 * cutoff / rate) * np.sinc(2.0 * cutoff / rate * n) * window
    return h


class Resampler:
    """Converts the sample rate of a stream, block by block, without clicks.

    A rational polyphase resampler: conceptually the input is upsampled by
    ``L``, low-pass filtered by a Kaiser-windowed sinc that removes everything
    above the lower of the two Nyquist frequencies (so 48 kHz to 16 kHz
    keeps 0-7 kHz and rejects content above 8 kHz by about 80 dB instead of
    aliasing it), and decimated by ``M``; only the needed outputs are computed.
    The filter's history is carried across blocks, so cutting the stream into
    blocks gives the same output as processing it at once.

    The output lags the input by :attr:`delay` output samples (the filter's
    latency: 24 samples, 1.5 ms, for 48 kHz to 16 kHz). :func:`resample`
    compensates it for one-shot use.

    Args:
        from_rate: Input rate in Hz.
        to_rate: Output rate in Hz.
        zero_crossings: Filter half-length, in zero crossings of the sinc;
            more is sharper and slower.

    Raises:
        UsageError: If a rate or ``zero_crossings`` is not positive.

    Example:
        >>> import numpy as np
        >>> r = Resampler(48_000, 16_000)
        >>> r.process(np.zeros((960, 2), np.int16)).shape
        (320, 2)
    """

    __slots__ = (
        "_channels",
        "_consumed",
        "_delay",
        "_down",
        "_filters",
        "_history",
        "_mono",
        "_produced",
        "_taps",
        "_up",
        "from_rate",
        "to_rate",
    )

    def __init__(
        self, from_rate: int = 48_000, to_rate: int = 16_000, *, zero_crossings: int = 24
    ) -> None:
        if from_rate < 1 or to_rate < 1 or zero_crossings < 1:
            raise UsageError("rates and zero_crossings must be positive")
        self.from_rate = from_rate
        self.to_rate = to_rate
        g = math.gcd(from_rate, to_rate)
        up, down = to_rate // g, from_rate // g
        self._up, self._down = up, down
        # Filter length 2*D*M + 1 at the upsampled rate puts its centre exactly
        # D output samples late: an integer delay that resample() can remove.
        if up == down:  # same rate: a one-tap identity filter, no delay
            delay, length, h = 0, 1, np.ones(1)
        else:
            delay = -(-zero_crossings * max(up, down) // down)
            length = 2 * delay * down + 1
            h = _lowpass(length, from_rate * up, min(from_rate, to_rate) / 2.0)
            h *= up / h.sum()  # unity gain at DC after zero-stuffing by L
        taps = -(-length // up)
        padded = np.zeros(taps * up)
        padded[:length] = h
        # Row p holds the taps of phase p, reversed to dot with input windows.
        self._filters = np.ascontiguousarray(padded.reshape(taps, up).T[:, ::-1], dtype=np.float32)
        self._taps = taps
        self._delay = delay
        self._channels = 0
        self._mono = False
        self._history = np.zeros((0, max(taps - 1, 0)), np.float32)
        self._consumed = 0  # input samples taken so far
        self._produced = 0  # output samples given so far

    @property
    def delay(self) -> int:
        """The filter latency in output samples."""
        return self._delay

    def process(self, pcm: PcmArray) -> PcmArray:
        """Resample the next block of the stream.

        Args:
            pcm: int16 samples, 1-D (mono) or ``(samples, channels)``; every
                block of a stream must have the same layout.

        Returns:
            The int16 output samples that this block completes, same layout;
            about ``len(pcm) * to_rate / from_rate`` of them (320 for a 20 ms
            block at 48 kHz to 16 kHz).

        Raises:
            UsageError: If ``pcm`` is not 1-D or 2-D, or its layout differs
                from earlier blocks.
        """
        if pcm.ndim not in (1, 2):
            raise UsageError(f"pcm must be 1-D or (samples, channels), got shape {pcm.shape}")
        mono = pcm.ndim == 1
        x = (pcm[:, np.newaxis] if mono else pcm).T.astype(np.float32)  # (channels, samples)
        if self._channels == 0:
            self._channels = x.shape[0]
            self._mono = mono
            self._history = np.zeros((x.shape[0], self._taps - 1), np.float32)
        elif x.shape[0] != self._channels or mono != self._mono:
            raise UsageError(f"block layout {pcm.shape} differs from the stream's")
        y = self._run(x)
        out = np.clip(np.rint(y), -32768, 32767).astype(np.int16).T
        return out[:, 0].copy() if self._mono else np.ascontiguousarray(out)

    def flush(self) -> PcmArray:
        """Return the last :attr:`delay` samples held in the filter and reset.

        After ``process`` of every block then ``flush``, the output holds
        ``delay + ceil(n * to_rate / from_rate)`` samples for ``n`` input ones.

        Returns:
            The int16 tail (empty if nothing was processed).
        """
        if self._channels == 0:
            return np.zeros(0, np.int16)
        up, down = self._up, self._down
        wanted = self._delay + -(-self._consumed * up // down) - self._produced
        last_input = ((self._produced + wanted - 1) * down) // up
        zeros = max(0, last_input - self._consumed + 1)
        shape = (zeros,) if self._mono else (zeros, self._channels)
        tail = self.process(np.zeros(shape, np.int16))[: max(wanted, 0)]
        self.reset()
        return tail

    def reset(self) -> None:
        """Forget the stream: the next block starts a new one."""
        self._channels = 0
        self._consumed = 0
        self._produced = 0

    def _run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        up, down, taps = self._up, self._down, self._taps
        n = x.shape[1]
        start = self._consumed
        buf = np.ascontiguousarray(np.concatenate((self._history, x), axis=1))
        if taps > 1:
            self._history = buf[:, buf.shape[1] - (taps - 1) :]
        self._consumed = start + n
        # Output k needs inputs up to floor(k * M / L); produce all k it can.
        k0 = self._produced
        k_end = ((start + n) * up - 1) // down + 1
        count = max(0, k_end - k0)
        self._produced = k0 + count
        out = np.empty((x.shape[0], count), np.float32)
        if count == 0:
            return out
        # Outputs k and k + L share a phase and need input windows M samples
        # apart, so each phase is one matrix-vector product over a strided
        # view of the buffer (row r of phase j ends at input floor(k*M/L)).
        item = buf.itemsize
        channels, width = buf.shape
        for j in range(min(up, count)):
            k = k0 + j
            phase = (k * down) % up
            first = (k * down) // up - start  # window start index in buf
            rows = np.ndarray(
                (channels, len(range(j, count, up)), taps),
                np.float32,
                buffer=buf,
                offset=first * item,
                strides=(width * item, down * item, item),
            )
            # A contiguous copy lets matmul use BLAS; strided matmul is 4x slower.
            out[:, j::up] = np.ascontiguousarray(rows) @ self._filters[phase]
        return out


def resample(pcm: PcmArray, from_rate: int = 48_000, to_rate: int = 16_000) -> PcmArray:
    """Resample a whole signal at once, compensating the filter delay.

    Args:
        pcm: int16 samples, 1-D (mono) or ``(samples, channels)``.
        from_rate: Input rate in Hz.
        to_rate: Output rate in Hz.

    Returns:
        ``ceil(len(pcm) * to_rate / from_rate)`` int16 samples, same layout,
        time-aligned with the input.

    Raises:
        UsageError: If a rate is not positive.

    Example:
        >>> import numpy as np
        >>> resample(np.zeros(48_000, np.int16), 48_000, 16_000).shape
        (16000,)
    """
    resampler = Resampler(from_rate, to_rate)
    if pcm.shape[0] == 0:
        return pcm.copy()
    out = np.concatenate((resampler.process(pcm), resampler.flush()))
    length = -(-pcm.shape[0] * to_rate // from_rate)
    return out[resampler.delay : resampler.delay + length]


_PITCH_RATE = 16_000  # pitch analysis runs on a 16 kHz mono copy
_PITCH_WINDOW = 0.04  # seconds per analysis window
_YIN_THRESHOLD = 0.15  # a dip of YIN's normalised difference below this is a period


def fundamental_frequency(
    pcm: PcmArray,
    sample_rate: int = 48_000,
    *,
    fmin: float = 60.0,
    fmax: float = 600.0,
    threshold_dbfs: float = -40.0,
) -> float | None:
    """Estimate the pitch of a voice: the median fundamental over its voiced windows.

    Each 40 ms window at or above ``threshold_dbfs`` is analysed with the YIN
    method (de Cheveigné and Kawahara, 2002): the first lag where the
    cumulative-mean-normalised difference dips below 0.15 is the period,
    refined by parabolic interpolation. Unlike the strongest spectral peak,
    this finds the fundamental of a vowel whose loudest harmonics sit on its
    formants. Windows with no clear period (silence, noise) are skipped.

    Args:
        pcm: int16 samples, 1-D or ``(samples, channels)``.
        sample_rate: Samples per second of ``pcm``.
        fmin: The lowest pitch searched, in Hz.
        fmax: The highest pitch searched, in Hz (below 8 kHz).
        threshold_dbfs: Quieter windows are skipped.

    Returns:
        The median pitch in Hz, or ``None`` if no window was voiced.

    Raises:
        UsageError: If ``0 < fmin < fmax < 8000`` does not hold.
    """
    if not 0 < fmin < fmax < _PITCH_RATE / 2:
        raise UsageError(f"need 0 < fmin < fmax < {_PITCH_RATE // 2}, got {fmin}, {fmax}")
    mono = to_mono(pcm).astype(np.float64) if pcm.ndim == 2 else pcm.astype(np.float64)
    x = resample(mono.astype(np.int16), sample_rate, _PITCH_RATE).astype(np.float64)
    width = round(_PITCH_WINDOW * _PITCH_RATE)
    lag_min, lag_max = int(_PITCH_RATE / fmax), int(np.ceil(_PITCH_RATE / fmin))
    limit = (_FULL_SCALE * 10.0 ** (threshold_dbfs / 20.0)) ** 2
    pitches = []
    for start in range(0, x.size - width - lag_max, width // 2):
        frame = x[start : start + width + lag_max]
        if float(np.mean(frame[:width] ** 2)) < limit:
            continue
        period = _yin_period(frame, width, lag_min, lag_max)
        if period is not None:
            pitches.append(_PITCH_RATE / period)
    return float(np.median(pitches)) if pitches else None


def _yin_period(
    frame: npt.NDArray[np.float64], width: int, lag_min: int, lag_max: int
) -> float | None:
    """The period in samples of one window (``width + lag_max`` samples), or ``None``."""
    head = frame[:width]
    # d(t) = sum (x_j - x_{j+t})^2 = E(head) + E(frame[t:t+width]) - 2 cross(t), all t at once.
    size = 1 << int(np.ceil(np.log2(frame.size + width)))
    cross = np.fft.irfft(np.fft.rfft(frame, size) * np.conj(np.fft.rfft(head, size)), size)
    cross = cross[: lag_max + 1]
    squares = np.concatenate(([0.0], np.cumsum(frame**2)))
    shifted = squares[width : width + lag_max + 1] - squares[: lag_max + 1]
    diff = np.maximum(squares[width] + shifted - 2.0 * cross, 0.0)
    diff[0] = 0.0
    running = np.cumsum(diff[1:])
    normalised = np.ones_like(diff)
    normalised[1:] = diff[1:] * np.arange(1, lag_max + 1) / np.maximum(running, 1e-12)
    below = np.flatnonzero(normalised[lag_min:lag_max] < _YIN_THRESHOLD)
    if below.size == 0:
        return None
    t = lag_min + int(below[0])
    while t + 1 < lag_max and normalised[t + 1] < normalised[t]:
        t += 1  # down to the bottom of the dip
    a, b, c = normalised[t - 1], normalised[t], normalised[t + 1]
    bend = a - 2.0 * b + c
    return t + (0.5 * (a - c) / bend if bend > 0 else 0.0)


@dataclass(frozen=True, slots=True)
class VoiceActivity:
    """A change reported by :class:`VoiceActivityDetector`.

    Attributes:
        speaking: ``True`` when speech started, ``False`` when it stopped.
        frame: The index of the frame where it happened: the first loud frame
            of the onset, or the first quiet frame after the speech.
    """

    speaking: bool
    frame: int


class VoiceActivityDetector:
    """An energy-threshold voice activity detector with onset and hangover.

    Feed it one frame at a time (e.g. 20 ms). Speech starts after
    ``start_frames`` consecutive frames at or above ``threshold_dbfs`` (a
    click does not count) and stops after ``hangover_frames`` consecutive
    quieter frames (pauses between words do not count). Missing packets and
    Discord silence frames (``F8 FF FE``) count as quiet frames: tell it with
    :meth:`update_silence`.

    Args:
        threshold_dbfs: Level separating speech from background.
        start_frames: Loud frames in a row needed to start.
        hangover_frames: Quiet frames in a row needed to stop (15 x 20 ms = 300 ms).

    Raises:
        UsageError: If a frame count is below 1.

    Example:
        >>> import numpy as np
        >>> vad = VoiceActivityDetector(start_frames=1, hangover_frames=2)
        >>> loud = np.full(960, 8000, np.int16)
        >>> vad.update(loud)
        VoiceActivity(speaking=True, frame=0)
        >>> vad.update_silence(), vad.update_silence()
        (None, VoiceActivity(speaking=False, frame=1))
    """

    __slots__ = (
        "_frame",
        "_loud_run",
        "_quiet_run",
        "_speaking",
        "hangover_frames",
        "start_frames",
        "threshold_dbfs",
    )

    def __init__(
        self, *, threshold_dbfs: float = -45.0, start_frames: int = 2, hangover_frames: int = 15
    ) -> None:
        if start_frames < 1 or hangover_frames < 1:
            raise UsageError("start_frames and hangover_frames must be >= 1")
        self.threshold_dbfs = threshold_dbfs
        self.start_frames = start_frames
        self.hangover_frames = hangover_frames
        self._speaking = False
        self._frame = 0
        self._loud_run = 0
        self._quiet_run = 0

    @property
    def speaking(self) -> bool:
        """Whether speech is in progress."""
        return self._speaking

    @property
    def frames(self) -> int:
        """How many frames were fed so far."""
        return self._frame

    def update(self, pcm: PcmArray) -> VoiceActivity | None:
        """Feed the next frame of audio.

        Args:
            pcm: int16 samples of the frame, any layout.

        Returns:
            A :class:`VoiceActivity` when speech starts or stops with this
            frame, else ``None``.
        """
        return self.update_level(dbfs(pcm))

    def update_level(self, level_dbfs: float) -> VoiceActivity | None:
        """Feed the next frame by its level, when it is already measured.

        Args:
            level_dbfs: The frame's level (``-inf`` for a known-quiet frame).

        Returns:
            A :class:`VoiceActivity` when speech starts or stops with this
            frame, else ``None``.
        """
        return self._step(level_dbfs >= self.threshold_dbfs)

    def update_silence(self) -> VoiceActivity | None:
        """Feed a frame known to be silent: a missing packet or a silence frame.

        Returns:
            A :class:`VoiceActivity` when speech stops with this frame, else ``None``.
        """
        return self._step(False)

    def reset(self) -> None:
        """Return to "not speaking" and restart the frame count."""
        self._speaking = False
        self._frame = 0
        self._loud_run = 0
        self._quiet_run = 0

    def _step(self, loud: bool) -> VoiceActivity | None:
        index = self._frame
        self._frame += 1
        if loud:
            self._loud_run += 1
            self._quiet_run = 0
        else:
            self._quiet_run += 1
            self._loud_run = 0
        if not self._speaking and self._loud_run >= self.start_frames:
            self._speaking = True
            return VoiceActivity(True, index - self.start_frames + 1)
        if self._speaking and self._quiet_run >= self.hangover_frames:
            self._speaking = False
            return VoiceActivity(False, index - self.hangover_frames + 1)
        return None
