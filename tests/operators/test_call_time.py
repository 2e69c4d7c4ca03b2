"""Call time: PcmChunk.time from arrival and RTP timestamps, carried by every operator."""

from __future__ import annotations

import numpy as np
import pytest

from rxvoice import operators as vops
from rxvoice.events import PcmChunk
from rxvoice.operators._decode import NEW_SPURT_LATENESS, STALL_LIMIT, CallClock
from rxvoice.testing.marbles import SUBSCRIBED, values, voice_marbles
from rxvoice.testing.packets import tone_pcm


def run(marbles: str, *pipeline):  # type: ignore[no-untyped-def]
    with voice_marbles() as m:
        return values(m.start(m.hot(marbles).pipe(*pipeline), describe=False))


def spurt(first: int, count: int) -> str:
    """``count`` frames from ``first``, one every 20 ms: ``0(1)(2)``."""
    return str(first) + "".join(f"({n})" for n in range(first + 1, first + count))


def at(position: int) -> float:
    """The virtual time of marble position ``position``."""
    return SUBSCRIBED + 0.02 * position


# -- the pure clock --------------------------------------------------------------


def test_clock_anchors_on_arrival_and_follows_timestamps():
    clock = CallClock()
    assert clock.time_of(960) == 0.0
    clock.follow(10.0, 4_294_966_336)  # near the 32-bit wrap
    assert clock.time_of(4_294_966_336 + 960 - 2**32) == pytest.approx(10.02)
    clock.follow(10.09, 0)  # 70 ms of jitter: the timestamp still rules
    assert clock.time_of(0) == pytest.approx(10.02)
    clock.follow(10.04 + NEW_SPURT_LATENESS + 0.01, 960, silent=True)  # late, mid-speech
    assert clock.time_of(960) == pytest.approx(10.04)  # a stall on our side: kept in place
    clock.follow(10.06 + NEW_SPURT_LATENESS + 0.01, 1920)  # late after silence: a new spurt
    assert clock.time_of(1920) == pytest.approx(10.17)
    clock.follow(10.19 + STALL_LIMIT + 0.01, 2880)  # too late to be a stall, even mid-speech
    assert clock.time_of(2880) == pytest.approx(11.2)
    assert clock.time_of(1920) == pytest.approx(11.18)


def test_a_stalled_receiver_does_not_cut_a_spurt():
    # 0.3 s of audio reach decode_opus late and at once (an event loop that
    # stalled): they are placed by timestamp, so the spurt stays whole.
    marbles = "-" + spurt(0, 5) + "-" * 15 + "(5,6,7,8,9,10,11,12,13,14,15,16,17,18,19)" + "(20)-|"
    chunks = run(marbles, vops.decode_opus())
    assert [c.time for c in chunks] == pytest.approx([at(1) + 0.02 * n for n in range(21)])


# -- decode_opus ----------------------------------------------------------------


def test_the_issue_example_a_start_after_a_pause_is_placed_by_arrival():
    # A user talks 2.14 s (107 frames), is quiet 1.12 s (sending nothing, so
    # the RTP timestamp stops), then talks again: the second spurt starts at
    # 3.28 s after the first frame, not where the timestamp would put it.
    marbles = "-" + spurt(0, 107) + "-" * 56 + spurt(107, 3) + "-|"
    chunks = run(marbles, vops.decode_opus())
    assert [c.time for c in chunks[:3]] == pytest.approx([at(1), at(2), at(3)])
    assert chunks[106].time == pytest.approx(at(107))
    assert chunks[107].time - chunks[0].time == pytest.approx(3.26)
    assert [c.time for c in chunks[107:]] == pytest.approx([at(164), at(165), at(166)])
    # The RTP timestamp alone would have said 2.14 s.
    assert (chunks[107].timestamp - chunks[0].timestamp) / 48_000 == pytest.approx(2.14)


def test_jitter_within_a_spurt_does_not_move_the_time():
    # Frame 2 arrives 40 ms late, with frame 3: times stay 20 ms apart.
    chunks = run("-0(1)--(2,3)(4)-|", vops.decode_opus())
    assert [c.time for c in chunks] == pytest.approx([at(1 + k) for k in range(5)])


def test_filled_chunks_take_the_time_of_the_audio_they_replace():
    chunks = run("-0-3-|", vops.decode_opus(fec=False))  # 1, 2 concealed
    assert [(c.concealed, c.time) for c in chunks] == [
        (False, pytest.approx(at(1))),
        (True, pytest.approx(at(1) + 0.02)),
        (True, pytest.approx(at(1) + 0.04)),
        (False, pytest.approx(at(1) + 0.06)),
    ]
    # A new spurt (after the sender's silence) whose first packets were lost:
    # counted back from its arrival.
    chunks = run("-0s" + "-" * 30 + "3-|", vops.decode_opus())
    assert [c.time for c in chunks[1:]] == pytest.approx([at(32) - 0.04, at(32) - 0.02, at(32)])
    assert chunks[2].recovered


def test_a_resync_reanchors_on_arrival():
    chunks = run("-0(1)(5000)(5001)-|", vops.decode_opus())
    assert [c.time for c in chunks] == pytest.approx([at(1), at(2), at(3), at(4)])


def test_each_user_has_their_own_clock():
    chunks = run("-0(1)-(b40)(b41)-|", vops.decode_opus())
    assert [(c.user_id, round(c.time - SUBSCRIBED, 3)) for c in chunks] == [
        ("1001", 0.02),
        ("1001", 0.04),
        ("1002", 0.08),
        ("1002", 0.10),
    ]


# -- operators that derive chunks -----------------------------------------------


def timed(n: int, time: float, pcm: np.ndarray | None = None) -> PcmChunk:  # type: ignore[type-arg]
    pcm = tone_pcm(440, n) if pcm is None else pcm
    return PcmChunk("1001", 1, n * 960, pcm, 48_000, time=time)


def test_buffer_resample_mono_trim_and_levels_carry_the_time():
    lookup = {f"x{n}": timed(n, 5.0 + 0.02 * n) for n in range(4)}
    with voice_marbles() as m:
        source = m.hot("-x0-x1-x2-x3-|", lookup)
        cut = values(m.start(source.pipe(vops.buffer_duration(0.03)), describe=False))
    assert [c.time for c in cut] == pytest.approx([5.0, 5.03, 5.06])
    with voice_marbles() as m:
        source = m.hot("-x0-x1-x2-x3-|", lookup)
        out = values(m.start(source.pipe(vops.to_mono(), vops.resample(16_000)), describe=False))
    # Each output chunk's first sample is where its time says, on the input's clock.
    starts = np.cumsum([0] + [c.samples for c in out[:-1]]) / 16_000
    assert [c.time for c in out] == pytest.approx(list(5.0 + starts), abs=1 / 16_000)
    with voice_marbles() as m:
        source = m.hot("-x0-x1-|", lookup)
        levels = values(m.start(source.pipe(vops.levels()), describe=False))
    assert [level.time for level in levels] == pytest.approx([5.0, 5.02])
    quiet = np.zeros((960, 2), np.int16)
    half = np.concatenate([np.zeros((480, 2), np.int16), tone_pcm(440, 0)[:480]])
    trim_lookup = {"q": timed(0, 7.0, quiet), "h": timed(1, 7.02, half), "l": timed(2, 7.04)}
    with voice_marbles() as m:
        kept = values(
            m.start(m.hot("-q-h-l-|", trim_lookup).pipe(vops.trim_silence()), describe=False)
        )
    assert [c.time for c in kept] == pytest.approx([7.02 + 0.01, 7.04])


def test_mix_ticks_carry_the_call_time_of_their_audio():
    lookup = {"x": timed(0, at(1)), "y": timed(1, at(2))}
    with voice_marbles() as m:
        result = m.start(m.hot("-x(y)-|", lookup).pipe(vops.mix(delay=0.04)), describe=False)
    # Ticks from 40 ms after the first chunk, every 20 ms, each carrying the
    # call time of the audio it holds (not when it was emitted).
    assert [r.time for r in result[:-1]] == [60, 80]
    assert [t.time for t in values(result)] == pytest.approx([at(1), at(2)])


def test_voice_activity_changes_carry_the_time():
    # Loud from frame 0, quiet from frame 5 (silence frames): on at frame 0's
    # time, off at the first quiet frame's.
    marbles = "-" + spurt(0, 5) + "(5s)" + "".join(f"({n}s)" for n in range(6, 24)) + "-|"
    with voice_marbles() as m:
        pipeline = (vops.decode_opus(), vops.voice_activity(hangover_frames=3))
        changes = values(m.start(m.hot(marbles).pipe(*pipeline), describe=False))
    # (The first silence frame still decodes the tone's decay: off a frame later.)
    assert [(c.speaking, c.time) for c in changes] == [
        (True, pytest.approx(at(1))),
        (False, pytest.approx(at(7))),
    ]
    # Packets stop: the end of the last frame heard.
    with voice_marbles() as m:
        pipeline = (vops.decode_opus(), vops.voice_activity(hangover_frames=3))
        source = m.hot("-" + spurt(0, 4) + "-----------|")
        changes = values(m.start(source.pipe(*pipeline), describe=False))
    assert [(c.speaking, c.time) for c in changes] == [
        (True, pytest.approx(at(1))),
        (False, pytest.approx(at(5))),
    ]
