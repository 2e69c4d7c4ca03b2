from __future__ import annotations

import math

import numpy as np
import pytest

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
from rxvoice.errors import UsageError


def tone(
    freq: float, seconds: float = 1.0, rate: int = 48_000, amplitude: float = 16_000
) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def peak_frequency(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


# -- channels and levels -------------------------------------------------------


def test_to_mono() -> None:
    stereo = np.array([[100, 300], [-32768, -32768], [32767, 32767], [1, 2]], np.int16)
    assert to_mono(stereo).tolist() == [200, -32768, 32767, 1]
    mono = np.array([1, 2, 3], np.int16)
    assert to_mono(mono) is mono
    assert to_mono(mono.reshape(3, 1)).tolist() == [1, 2, 3]
    with pytest.raises(UsageError):
        to_mono(np.zeros((2, 2, 2), np.int16))


def test_rms_and_dbfs_known_values() -> None:
    square = np.array([32767, -32768] * 480, np.int16)
    assert dbfs(square) == pytest.approx(0.0, abs=0.001)
    assert dbfs(tone(1000)) == pytest.approx(20 * math.log10(16_000 / 32768) - 3.0103, abs=0.01)
    assert rms(np.full((960, 2), 1000, np.int16)) == pytest.approx(1000.0)
    assert rms(np.array([3, -4, 3, -4], np.int16)) == pytest.approx(math.sqrt(12.5))
    half = np.full(960, 16384, np.int16)
    assert dbfs(half) == pytest.approx(-6.0206, abs=0.001)


def test_dbfs_of_silence() -> None:
    silence = np.zeros((960, 2), np.int16)
    assert rms(silence) == 0.0
    assert dbfs(silence) == -math.inf
    assert dbfs(silence, floor=-100.0) == -100.0
    assert dbfs(np.zeros(0, np.int16)) == -math.inf
    assert dbfs(np.full(960, 1, np.int16), floor=-60.0) == -60.0  # clamped


# -- resampling ----------------------------------------------------------------


def test_resample_keeps_a_1khz_tone() -> None:
    x = tone(1000)
    y = resample(x, 48_000, 16_000)
    assert y.shape == (16_000,)
    assert y.dtype == np.int16
    assert peak_frequency(y, 16_000) == pytest.approx(1000, abs=2)
    assert rms(y) == pytest.approx(rms(x), rel=0.01)
    # Time-aligned: it matches a 1 kHz tone sampled at 16 kHz directly.
    assert np.abs(y[100:-100].astype(np.int32) - tone(1000, rate=16_000)[100:-100]).max() <= 3


def test_resample_removes_a_10khz_tone_instead_of_aliasing_it() -> None:
    x = tone(10_000)
    y = resample(x, 48_000, 16_000)
    # Plain decimation would fold it to 6 kHz at full level.
    assert rms(x[::3]) > 10_000
    assert dbfs(y[100:-100]) - dbfs(x) < -60


def test_blockwise_equals_one_shot() -> None:
    x = np.stack([tone(1000), tone(440) // 2], axis=1)
    one_shot = resample(x)
    resampler = Resampler(48_000, 16_000)
    parts = [resampler.process(x[i : i + 960]) for i in range(0, len(x), 960)]
    parts.append(resampler.flush())
    streamed = np.concatenate(parts)
    assert streamed.shape == (resampler.delay + 16_000, 2)
    diff = np.abs(streamed[resampler.delay :].astype(np.int32) - one_shot)
    assert diff.max() <= 1


def test_uneven_blocks_equal_one_shot() -> None:
    x = tone(1000)
    whole = Resampler()
    reference = np.concatenate([whole.process(x), whole.flush()])
    rng = np.random.default_rng(7)
    r = Resampler()
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(0, 700))
        parts.append(r.process(x[i : i + n]))
        i += n
    parts.append(r.flush())
    assert np.abs(np.concatenate(parts).astype(np.int32) - reference).max() <= 1


def test_twenty_ms_block_gives_320_samples() -> None:
    r = Resampler()
    for _ in range(5):
        assert r.process(np.zeros((960, 2), np.int16)).shape == (320, 2)


@pytest.mark.parametrize(("src", "dst"), [(16_000, 48_000), (48_000, 8_000), (44_100, 48_000)])
def test_other_ratios(src: int, dst: int) -> None:
    x = tone(1000, rate=src)
    y = resample(x, src, dst)
    assert len(y) == dst
    assert peak_frequency(y, dst) == pytest.approx(1000, abs=2)
    assert np.abs(y[200:-200].astype(np.int32) - tone(1000, rate=dst)[200:-200]).max() <= 4


def test_same_rate_is_identity() -> None:
    x = tone(1000, seconds=0.1)
    assert (resample(x, 48_000, 48_000) == x).all()


def test_resampler_rejects_a_layout_change_and_bad_rates() -> None:
    r = Resampler()
    r.process(np.zeros((960, 2), np.int16))
    with pytest.raises(UsageError):
        r.process(np.zeros(960, np.int16))
    r.reset()
    assert r.process(np.zeros(960, np.int16)).shape == (320,)
    with pytest.raises(UsageError):
        Resampler(0, 16_000)
    assert Resampler().flush().shape == (0,)
    assert resample(np.zeros(0, np.int16)).shape == (0,)


# -- voice activity ------------------------------------------------------------


def speech_bursts() -> tuple[list[np.ndarray], list[bool]]:
    """20 ms frames: noise, a word, a short pause, a word, noise, a click, noise."""
    rng = np.random.default_rng(3)
    plan = [(10, False), (20, True), (5, False), (15, True), (30, False), (1, True), (10, False)]
    frames, truth = [], []
    for count, voiced in plan:
        for _ in range(count):
            noise = rng.normal(0, 30, 960)  # about -61 dBFS
            if voiced:
                t = np.arange(960) / 48_000
                noise = noise + 8000 * np.sin(2 * np.pi * 180 * t) * rng.uniform(0.5, 1.0)
            frames.append(noise.astype(np.int16))
            truth.append(voiced)
    return frames, truth


def test_vad_on_speech_like_bursts() -> None:
    frames, _ = speech_bursts()
    vad = VoiceActivityDetector(threshold_dbfs=-40, start_frames=2, hangover_frames=10)
    events = [e for f in frames if (e := vad.update(f)) is not None]
    # One utterance: the 5-frame pause is bridged by the hangover, the lone
    # click is too short to start speech.
    assert events == [VoiceActivity(True, 10), VoiceActivity(False, 50)]
    assert not vad.speaking
    assert vad.frames == len(frames)


def test_vad_stops_on_missing_or_silence_frames() -> None:
    vad = VoiceActivityDetector(start_frames=1, hangover_frames=5)
    loud = np.full((960, 2), 5000, np.int16)
    assert vad.update(loud) == VoiceActivity(True, 0)
    assert vad.update(loud) is None
    results = [vad.update_silence() for _ in range(5)]
    assert results[:4] == [None] * 4
    assert results[4] == VoiceActivity(False, 2)
    vad.reset()
    assert vad.frames == 0
    assert not vad.speaking
    with pytest.raises(UsageError):
        VoiceActivityDetector(hangover_frames=0)


# -- trimming ------------------------------------------------------------------


def test_trim_silence() -> None:
    quiet = np.zeros(4800, np.int16)
    sound = tone(440, seconds=0.1)
    pcm = np.concatenate([quiet, sound, quiet])
    trimmed = trim_silence(pcm, -50.0)
    assert len(sound) <= len(trimmed) <= len(sound) + 2 * 480
    assert rms(trimmed) >= rms(sound) * 0.9
    assert trim_silence(quiet).shape == (0,)
    assert trim_silence(np.zeros(0, np.int16)).shape == (0,)
    stereo = np.stack([pcm, pcm], axis=1)
    assert trim_silence(stereo).shape[1] == 2
    with pytest.raises(UsageError):
        trim_silence(pcm, window=0)


def test_trim_silence_ignores_quiet_noise_but_keeps_a_short_sound() -> None:
    rng = np.random.default_rng(1)
    pcm = rng.normal(0, 10, 48_000).astype(np.int16)  # about -70 dBFS
    pcm[24_000:24_480] = 10_000
    trimmed = trim_silence(pcm, -50.0)
    assert len(trimmed) == 480
    assert (trimmed == 10_000).all()
