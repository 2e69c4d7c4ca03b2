"""buffer_duration, to_mono, resample, levels, trim_silence, voice_activity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rxvoice import operators as vops
from rxvoice.audio.dsp import resample as resample_whole
from rxvoice.errors import UsageError
from rxvoice.events import AudioGap, AudioLevel, PcmChunk
from rxvoice.testing.marbles import values, voice_marbles
from rxvoice.testing.packets import concat, dominant_frequency, tone_pcm

A, B = ("1001", 1), ("1002", 2)


def chunk(who: tuple[str, int], n: int, pcm: np.ndarray, **flags: bool) -> PcmChunk:  # type: ignore[type-arg]
    return PcmChunk(who[0], who[1], n * 960, pcm, 48_000, **flags)


def constant(level: int, samples: int = 960) -> np.ndarray:  # type: ignore[type-arg]
    return np.full((samples, 2), level, np.int16)


# -- buffer_duration -------------------------------------------------------------


def test_buffer_duration_joins_and_cuts_per_user():
    lookup = {f"a{n}": chunk(A, n, constant(n)) for n in range(5)}
    lookup |= {f"b{n}": chunk(B, n, constant(-n)) for n in range(2)}
    with voice_marbles() as m:
        source = m.hot("-a0-a1-b0-a2-b1-a3-a4-|", lookup)
        result = m.start(source.pipe(vops.buffer_duration(0.04)))
        # a's 40 ms chunks at frames 0 and 2; b's at 0; a's last 20 ms on completion.
        assert result == m.exp("---p0-----bp0-p2---(p4,|)")
    with voice_marbles() as m:
        raw = values(
            m.start(m.hot("-a0-a1-a2-|", lookup).pipe(vops.buffer_duration(0.03)), describe=False)
        )
    assert [c.samples for c in raw] == [1440, 1440]
    assert [c.timestamp for c in raw] == [0, 1440]
    assert raw[0].pcm[:960, 0].tolist() == [0] * 960 and raw[0].pcm[960:, 0].tolist() == [1] * 480
    assert raw[1].pcm[:480, 0].tolist() == [1] * 480 and raw[1].pcm[480:, 0].tolist() == [2] * 960


def test_buffer_duration_flags_and_bad_argument():
    lookup = {"x": chunk(A, 0, constant(1)), "y": chunk(A, 1, constant(1), concealed=True)}
    with voice_marbles() as m:
        [out] = values(
            m.start(m.hot("-x-y-|", lookup).pipe(vops.buffer_duration(0.04)), describe=False)
        )
    assert out.concealed and not out.recovered
    with pytest.raises(UsageError):
        vops.buffer_duration(0)


# -- to_mono -------------------------------------------------------------------


def test_to_mono_averages_channels():
    pcm = np.stack([np.full(960, 100, np.int16), np.full(960, 300, np.int16)], axis=1)
    with voice_marbles() as m:
        [out] = values(
            m.start(m.hot("-x-|", {"x": chunk(A, 0, pcm)}).pipe(vops.to_mono()), describe=False)
        )
    assert out.pcm.shape == (960, 1) and set(out.pcm[:, 0].tolist()) == {200}
    assert (out.user_id, out.timestamp) == ("1001", 0)


# -- resample ------------------------------------------------------------------


def test_resample_streams_exactly_like_the_whole_signal():
    frames = [tone_pcm(440, n) for n in range(10)]
    lookup = {f"x{n}": chunk(A, n, pcm) for n, pcm in enumerate(frames)}
    marbles = "-" + "-".join(lookup) + "-|"
    with voice_marbles() as m:
        out = values(m.start(m.hot(marbles, lookup).pipe(vops.resample(16_000)), describe=False))
    assert all(c.sample_rate == 16_000 for c in out)
    streamed = concat(out)
    whole = resample_whole(np.concatenate(frames), 48_000, 16_000)
    assert streamed.shape == whole.shape == (3200, 2)
    assert np.array_equal(streamed, whole)
    assert dominant_frequency(streamed, 16_000) == pytest.approx(440, abs=10)
    # The filter delay is removed: the first chunk starts at the stream's start.
    assert out[0].timestamp == 0


def test_resample_keeps_users_apart_and_passes_the_target_rate():
    lookup = {
        "a": chunk(A, 0, tone_pcm(440, 0)),
        "b": chunk(B, 0, tone_pcm(660, 0)),
        "s": PcmChunk("1003", 3, 0, constant(1, 320), 16_000),
    }
    with voice_marbles() as m:
        out = values(m.start(m.hot("-a-b-s-|", lookup).pipe(vops.resample()), describe=False))
    assert any(c is lookup["s"] for c in out)  # already 16 kHz: passed as is
    per_user = {u: concat(c for c in out if c.user_id == u) for u in ("1001", "1002")}
    assert {u: p.shape for u, p in per_user.items()} == {"1001": (320, 2), "1002": (320, 2)}


# -- levels --------------------------------------------------------------------


def test_levels():
    lookup = {"x": chunk(A, 0, constant(16384)), "q": chunk(A, 1, constant(0))}
    with voice_marbles() as m:
        out = values(m.start(m.hot("-x-q-|", lookup).pipe(vops.levels()), describe=False))
    assert out[0] == AudioLevel("1001", 1, 0, 16384.0, pytest.approx(20 * math.log10(0.5)))
    assert out[1].dbfs == -math.inf
    with voice_marbles() as m:
        floor = values(
            m.start(m.hot("-q-|", lookup).pipe(vops.levels(floor=-100.0)), describe=False)
        )
    assert floor[0].dbfs == -100.0


# -- trim_silence ----------------------------------------------------------------


def test_trim_silence_drops_leading_and_trailing_silence():
    loud, quiet = constant(8000), constant(0)
    half = np.concatenate([constant(0, 480), constant(8000, 480)])
    lookup = {
        "q0": chunk(A, 0, quiet),
        "h1": chunk(A, 1, half),  # sound starts halfway
        "q2": chunk(A, 2, quiet),
        "L3": chunk(A, 3, loud),
        "q4": chunk(A, 4, quiet),
        "q5": chunk(A, 5, quiet),
    }
    with voice_marbles() as m:
        source = m.hot("-q0-h1-q2-L3-q4-q5-|", lookup)
        result = m.start(source.pipe(vops.trim_silence()))
        # The inner pause is kept once sound follows; the tail is dropped.
        assert result == m.exp("-------(p1,p2)-----(p3,|)")
    with voice_marbles() as m:
        out = values(
            m.start(m.hot("-q0-h1-q2-L3-q4-q5-|", lookup).pipe(vops.trim_silence()), describe=False)
        )
    assert [c.samples for c in out] == [480, 960, 960]
    assert out[0].timestamp == 960 + 480


def test_trim_silence_max_pause_shortens_inner_silence():
    lookup = {"L": chunk(A, 0, constant(8000)), "q": chunk(A, 1, constant(0))}
    with voice_marbles() as m:
        source = m.hot("-L-q-q-q-L-|", lookup)
        out = values(m.start(source.pipe(vops.trim_silence(max_pause=0.04)), describe=False))
    assert [c.samples for c in out] == [960, 960, 960, 960]


# -- voice_activity ------------------------------------------------------------


def vad_lookup() -> dict[str, object]:
    return (
        {f"L{n}": chunk(A, n, constant(8000)) for n in range(10)}
        | {f"q{n}": chunk(A, n, constant(0)) for n in range(10)}
        | {
            "c4": chunk(A, 4, constant(8000), concealed=True),
            "g3": AudioGap("1001", 1, 3, 2, 3 * 960),
        }
    )


def test_voice_activity_from_energy():
    with voice_marbles() as m:
        source = m.hot("-q0-L1-L2-L3-q4-q5-q6-|", vad_lookup())
        op = vops.voice_activity(start_frames=2, hangover_frames=3)
        assert m.start(source.pipe(op)) == m.exp("-----on1-------off4-|")


def test_concealed_chunks_and_gaps_count_as_quiet():
    with voice_marbles() as m:
        source = m.hot("-L0-L1-g3-c4-|", vad_lookup())
        op = vops.voice_activity(start_frames=2, hangover_frames=3)
        # g3 stands for frames 3 and 4 (count 2), c4 is the third quiet frame.
        assert m.start(source.pipe(op)) == m.exp("---on0---off3-|")


def test_voice_activity_stops_when_packets_stop():
    with voice_marbles() as m:
        source = m.hot("-L0-L1-L2----------------|", vad_lookup())
        op = vops.voice_activity(start_frames=2, hangover_frames=15, silence_timeout=0.1)
        # Nothing after 100 ms: stopped at 200 ms, at the end of frame 2.
        assert m.start(source.pipe(op)) == m.exp("---on0------off3-----------|")


def test_voice_activity_per_user():
    lookup = vad_lookup() | {"B0": chunk(B, 0, constant(8000)), "B1": chunk(B, 1, constant(8000))}
    with voice_marbles() as m:
        source = m.hot("-L0-B0-B1-|", lookup)
        op = vops.voice_activity(start_frames=2)
        assert m.start(source.pipe(op)) == m.exp("-----bon0-|")


def test_speech_after_a_timeout_starts_at_the_right_frame():
    with voice_marbles() as m:
        source = m.hot("-L0-L1-------L5-L6-|", vad_lookup())
        op = vops.voice_activity(start_frames=2, silence_timeout=0.1)
        assert m.render(m.start(source.pipe(op))) == "---on0----off2----on5-|"
