"""utterances: per-user speech cut with pre-roll, on call time, bounded in length."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from reactivex.notification import OnNext
from reactivex.testing.recorded import Recorded

from rxvoice import operators as vops
from rxvoice.errors import UsageError
from rxvoice.events import AudioGap, PcmChunk, Utterance
from rxvoice.operators._utterances import UtteranceCutter
from rxvoice.testing.marbles import SUBSCRIBED, values, voice_marbles
from rxvoice.testing.packets import dominant_frequency, tone_pcm


def frames(first: int, count: int, suffix: str = "") -> str:
    """``count`` consecutive frames from ``first``, one every 20 ms."""
    return "".join(f"({n}{suffix})" for n in range(first, first + count))


def frame_of(time: float) -> int:
    """The index of the frame heard at ``time`` (frame n arrives at position n + 1)."""
    return round((time - SUBSCRIBED) / 0.02) - 1


def token(u: Utterance) -> str:
    prefix = "" if u.user_id == "1001" else "b"
    more = "+" if u.continues else ""
    return f"{prefix}u{frame_of(u.start)}:{frame_of(u.end)}{more}"


def cut(marbles: str, **options: Any) -> tuple[str, list[Utterance]]:
    """Run decode_opus + utterances; return the drawn tokens and the utterances."""
    with voice_marbles() as m:
        pipeline = m.hot(marbles).pipe(vops.decode_opus(), vops.utterances(**options))
        records = m.start(pipeline, describe=False)
        tokens = [
            Recorded(r.time, OnNext(token(r.value.value))) if isinstance(r.value, OnNext) else r
            for r in records
        ]
        return m.render(tokens), values(records)


# -- marble tests ------------------------------------------------------------------


def test_an_utterance_is_emitted_when_the_user_stops_sending():
    # The docstring's diagram: seven loud frames, then nothing; the silence
    # timeout (3 frames) ends the speech 60 ms after the last packet.
    drawn, [u] = cut("-0(1)(2)(3)(4)(5)(6)-----|", hangover_frames=3)
    assert drawn == "----------u0:7--|"
    assert (u.user_id, u.ssrc, u.continues) == ("1001", 1, False)
    assert u.duration == pytest.approx(u.end - u.start) and u.samples == 7 * 320


def test_pre_roll_keeps_the_onset_the_detector_needed():
    # Quiet (silence frames) then loud from frame 12: speech is known at frame
    # 13, but the utterance starts 200 ms (10 frames) before frame 12.
    marbles = "-" + frames(0, 12, "s") + frames(12, 20) + "------|"
    drawn, [u] = cut(marbles, hangover_frames=3)
    assert drawn == "-" * 35 + "u2:32---|"
    assert u.start == pytest.approx(SUBSCRIBED + 0.02 * 3)
    without = cut(marbles, hangover_frames=3, pre_roll=0.0)[1][0]
    assert frame_of(without.start) == 12


def test_talk_spurts_are_cut_at_their_call_times():
    # Two spurts; the sender ends the first with five silence frames, pauses
    # 500 ms and its RTP timestamp does not advance meanwhile: the second
    # utterance still starts at its arrival.
    marbles = "-" + frames(0, 10) + frames(10, 5, "s") + "-" * 25 + frames(15, 10) + "-------|"
    drawn, (first, second) = cut(marbles, hangover_frames=3, pre_roll=0.1)
    assert drawn == "-" * 14 + "u0:14" + "-" * 38 + "u40:50----|"
    assert second.start - first.start == pytest.approx(0.8)
    assert second.start >= first.end


def test_long_speech_is_split_at_max_duration_without_losing_audio():
    drawn, parts = cut("-" + frames(0, 60) + "-----|", hangover_frames=3, max_duration=0.5)
    assert drawn == "-" * 25 + "u0:25+" + "-" * 24 + "u25:50+" + "-" * 12 + "u50:60--|"
    assert [p.continues for p in parts] == [True, True, False]
    assert [p.end for p in parts[:-1]] == [p.start for p in parts[1:]]
    assert sum(p.samples for p in parts) == 60 * 320


def test_two_users_are_cut_apart():
    marbles = "-" + "".join(f"({n},b{n})" for n in range(8)) + "-----|"
    drawn, both = cut(marbles, hangover_frames=3)
    assert drawn == "-" * 11 + "(u0:8,bu0:8)--|"
    assert {u.user_id for u in both} == {"1001", "1002"}
    a = next(u for u in both if u.user_id == "1001")
    b = next(u for u in both if u.user_id == "1002")
    assert dominant_frequency(a.pcm[:, 0], 16_000) == pytest.approx(440, abs=15)
    assert dominant_frequency(b.pcm[:, 0], 16_000) == pytest.approx(660, abs=20)


def test_completion_emits_the_utterance_in_progress():
    drawn, [u] = cut("-" + frames(0, 10) + "|")
    assert drawn == "-" + "-" * 10 + "(u0:10,|)"
    assert u.sample_rate == 16_000 and u.pcm.shape == (3200, 1) and u.pcm.dtype == np.int16


def test_a_lost_stretch_is_silence_on_the_timeline():
    # Frames 5-14 lost: decode_opus conceals 5-9 and recovers 14 from FEC;
    # nothing was heard of 10-13, which are silence in the utterance.
    marbles = "-" + frames(0, 5) + "-" * 10 + frames(15, 10) + "-----|"
    _, [u] = cut(marbles, hangover_frames=20, silence_timeout=0.3, sample_rate=None, mono=False)
    assert u.sample_rate == 48_000 and u.pcm.shape == (25 * 960, 2)
    assert np.abs(u.pcm[10 * 960 : 14 * 960]).max() == 0
    assert np.abs(u.pcm[5 * 960 : 6 * 960]).max() > 100  # concealment
    assert np.abs(u.pcm[15 * 960 : 16 * 960]).max() > 1000


def test_bad_arguments_and_a_format_change():
    for bad in ({"pre_roll": -1.0}, {"max_duration": 0.1}, {"sample_rate": 0}):
        with pytest.raises(UsageError):
            vops.utterances(**bad)
    loud = tone_pcm(440, 0)
    lookup = {
        "x": PcmChunk("1001", 1, 0, loud, 48_000, time=1.0),
        "y": PcmChunk("1001", 1, 960, loud[:320], 16_000, time=1.02),
    }
    with voice_marbles() as m:
        result = m.start(m.hot("-x-y-|", lookup).pipe(vops.utterances()))
    assert result[-1].value.kind == "E" and isinstance(result[-1].value.exception, UsageError)


# -- the pure cutter -------------------------------------------------------------


def chunk(n: int, time: float, *, loud: bool = True, concealed: bool = False) -> PcmChunk:
    pcm = tone_pcm(440, n) if loud else np.zeros((960, 2), np.int16)
    return PcmChunk("7", 70, n * 960, pcm, 48_000, concealed, time=time)


def test_the_cutter_never_overlaps_utterances_and_counts_gaps_as_quiet():
    cutter = UtteranceCutter("7", hangover_frames=2, pre_roll=0.3, post_roll=0.3)
    out: list[Utterance] = []
    for n in range(5):
        out += cutter.push(chunk(n, 10 + 0.02 * n))
    out += cutter.push(AudioGap("7", 70, 5, 2, 5 * 960))  # two missing packets: stop
    assert len(out) == 1 and not cutter.speaking
    assert out[0].start == pytest.approx(10.0) and out[0].end == pytest.approx(10.14)
    for n in range(7, 12):
        out += cutter.push(chunk(n, 10 + 0.02 * n))
    out += cutter.flush()
    assert out[1].start == pytest.approx(out[0].end)  # pre-roll stops at the last end
    assert cutter.flush() == []


def test_concealed_audio_is_kept_but_does_not_start_speech():
    cutter = UtteranceCutter("7", start_frames=2, sample_rate=None, mono=False)
    out = [u for n in range(4) for u in cutter.push(chunk(n, 0.02 * n, concealed=True))]
    assert out == [] and not cutter.speaking
    out = [u for n in range(4, 8) for u in cutter.push(chunk(n, 0.02 * n))]
    out += cutter.flush()
    # Pre-roll: the concealed frames before the onset are in the utterance.
    assert out[0].start == pytest.approx(0.0) and out[0].samples == 8 * 960
