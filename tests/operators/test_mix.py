"""mix: chunks placed on the call's timeline, summed into scheduler-timed ticks."""

from __future__ import annotations

import inspect
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
import reactivex
from reactivex import operators as ops

from rxvoice import operators as vops
from rxvoice.audio.dsp import dbfs
from rxvoice.errors import UsageError
from rxvoice.events import PcmChunk
from rxvoice.operators._mix import DEFAULT_DELAY
from rxvoice.testing.marbles import SUBSCRIBED, values, voice_marbles
from tests.mixcheck import check_mix

TICK = 0.02


def chunk(user: str, n: int, level: int, *, rate: int = 48_000, time: float = 0.0) -> PcmChunk:
    """A 20 ms chunk of a constant ``level`` at frame ``n`` of ``user``."""
    samples = rate // 50
    pcm = np.full((samples, 2), level, np.int16)
    return PcmChunk(user, int(user), n * 960, pcm, rate, time=time)


def at(position: int) -> float:
    """The virtual time of marble position ``position`` (20 ms positions)."""
    return SUBSCRIBED + TICK * position


def levels_of(records: list) -> list[int]:  # type: ignore[type-arg]
    return [int(c.pcm[0, 0]) for c in values(records)]


def mixed_levels(
    marbles: str, lookup: dict[str, PcmChunk], **options: Any
) -> tuple[list[int], Counter[str]]:
    """The levels of the ticks of ``mix(**options)`` over constant chunks, and its counts."""
    stats: Counter[str] = Counter()
    with voice_marbles() as m:
        source = m.hot(marbles, lookup).pipe(vops.mix(stats=stats, **options))
        result = m.start(source, describe=False)
    return levels_of(result), stats


def diagram(events: dict[int, list[str]], end: int) -> str:
    """A diagram of ``events`` by position (each a group), completion at position ``end``."""
    return "".join(f"({','.join(events[t])})" if t in events else "-" for t in range(end)) + "|"


def mix_of_decoded(
    marbles: str, *, timespan: float = TICK, fec: bool = True, **mix: Any
) -> tuple[list[Any], list[Any]]:
    """Frames through ``jitter_buffer`` (60 ms, a Connection's) and ``decode_opus``; the
    users' chunks and the mix's ticks together (all values) and as tokens (mix only)."""
    with voice_marbles(timespan, fec=fec) as m:
        pcm = m.hot(marbles).pipe(vops.jitter_buffer(latency=0.06), vops.decode_opus(), ops.share())
        both = reactivex.merge(pcm, pcm.pipe(vops.mix(**mix)))
        records = m.start(both, describe=False)
    return values(records), [m.describe(v) for v in values(records) if v.user_id is None]


# -- timing and placement ----------------------------------------------------------


def test_the_diagram_ticks_every_20_ms_from_the_delay_after_the_first_chunk():
    # The docstring's diagram: chunks placed by their arrival (no call time).
    lookup = {
        "p0": chunk("1", 0, 1),
        "p1": chunk("1", 1, 2),
        "p3": chunk("1", 3, 4),
        "bp0": chunk("2", 0, 10),
        "bp1": chunk("2", 1, 20),
    }
    with voice_marbles() as m:
        source = m.hot("-p0(p1)-p3---bp0(bp1)-|", lookup)
        result = m.start(source.pipe(vops.mix(delay=0.04)))
    assert result == m.exp("---m0(m1)m2(m3)m4(m5)m6(m7)(m8,|)")
    assert m.render(result) == "---m0(m1)m2(m3)m4(m5)m6(m7)(m8,|)"
    # a's frames 0, 1, 3 in ticks 0, 1, 3 (frame 2 lost: silence); b from tick 7,
    # where its first chunk's arrival puts it.
    levels = mixed_levels("-p0(p1)-p3---bp0(bp1)-|", lookup, delay=0.04)[0]
    assert levels == [1, 2, 0, 4, 0, 0, 0, 10, 20]


def test_ticks_carry_the_call_time_of_their_audio_and_the_default_delay():
    lookup = {"x": chunk("1", 0, 5, time=at(1)), "y": chunk("1", 1, 6, time=at(2))}
    with voice_marbles() as m:
        result = m.start(m.hot("-x(y)-|", lookup).pipe(vops.mix()), describe=False)
    assert DEFAULT_DELAY == inspect.signature(vops.mix).parameters["delay"].default == 0.2
    # Emitted 0.2 s after the audio's call time, which they carry.
    assert [r.time for r in result[:-1]] == [220, 240]
    assert [t.time for t in values(result)] == pytest.approx([at(1), at(2)])
    assert levels_of(result) == [5, 6]


def test_users_are_placed_by_call_time_and_summed():
    # b's frame 500 was heard with a's frame 10 but reaches the mix 20 ms later
    # (another path through the pipeline): it still plays in the same tick.
    lookup = {
        "a": chunk("1", 10, 100, time=at(1)),
        "A": chunk("1", 11, 200, time=at(2)),
        "b": chunk("2", 500, 1, time=at(1)),
        "B": chunk("2", 501, 2, time=at(2)),
    }
    assert mixed_levels("-a(b)A(B)---|", lookup, delay=0.04)[0] == [101, 202, 0, 0, 0, 0]


def test_chunks_without_call_time_are_placed_by_arrival():
    # Changed with issue 12 item 8: a user's first chunk used to play in the
    # tick open when it arrived, whatever the delay; now its arrival is its call
    # time, so b, arriving 20 ms after a, plays a tick later.
    lookup = {
        "a": chunk("1", 10, 100),
        "A": chunk("1", 11, 200),
        "b": chunk("2", 500, 1),
        "B": chunk("2", 501, 2),
    }
    assert mixed_levels("-a(b)A(B)---|", lookup, delay=0.04)[0] == [100, 201, 2, 0, 0, 0]


def test_the_schedulers_clock_may_differ_from_the_call_time():
    # Call times on another clock (a loop's) than the scheduler's: the first
    # chunk ties them.
    lookup = {
        "x": chunk("1", 0, 1, time=5.0),
        "y": chunk("1", 1, 2, time=5.02),
        "z": chunk("2", 7, 3, time=5.02),
    }
    with voice_marbles() as m:
        result = m.start(m.hot("-x(y,z)-|", lookup).pipe(vops.mix(delay=0.04)), describe=False)
    assert [r.time for r in result[:-1]] == [60, 80]
    assert levels_of(result) == [1, 5]
    assert [t.time for t in values(result)] == pytest.approx([5.0, 5.02])


def test_silence_fill_keeps_a_users_pause():
    # Frame 2 missing: its tick is silent, frame 3 plays in its own tick.
    lookup = {"x": chunk("1", 0, 9), "y": chunk("1", 1, 8), "z": chunk("1", 3, 7)}
    assert mixed_levels("-x(y)z---|", lookup) == ([9, 8, 0, 7], Counter())


def test_saturation():
    lookup = {"a": chunk("1", 0, 30_000), "b": chunk("2", 0, 30_000), "c": chunk("3", 0, -32768)}
    with voice_marbles() as m:
        result = m.start(m.hot("-(a,b)-|", lookup).pipe(vops.mix()), describe=False)
    assert levels_of(result)[0] == 32767
    with voice_marbles() as m:
        result = m.start(m.hot("-(c,c)-|", lookup).pipe(vops.mix()), describe=False)
    assert levels_of(result)[0] == -32768


def test_real_decoded_users_mix_into_both_tones():
    with voice_marbles() as m:
        pipeline = m.hot("-(0,b0)-(1,b1)-(2,b2)-(3,b3)-|").pipe(vops.decode_opus(), vops.mix())
        result = m.start(pipeline, describe=False)
    mixed = np.concatenate([c.pcm for c in values(result)]).astype(np.float64).mean(axis=1)
    spectrum = np.abs(np.fft.rfft(mixed))
    freqs = np.fft.rfftfreq(mixed.size, 1 / 48_000)
    for tone in (440, 660):
        band = spectrum[(freqs > tone - 30) & (freqs < tone + 30)].max()
        assert band > 0.2 * spectrum.max()


def test_wrong_rate_ends_the_pipeline():
    with voice_marbles() as m:
        result = m.start(m.hot("-x-|", {"x": chunk("1", 0, 1, rate=16_000)}).pipe(vops.mix()))
    assert result[0].value.kind == "E"
    assert isinstance(result[0].value.exception, UsageError)


def test_completion_without_audio_and_bad_arguments():
    with voice_marbles() as m:
        assert m.start(m.hot("---|").pipe(vops.mix())) == m.exp("---|")
    for bad in ({"interval": 0}, {"delay": -0.1}, {"delay": math.inf}, {"max_ahead": -1}):
        with pytest.raises(UsageError):
            vops.mix(**bad)


def test_a_users_new_ssrc_is_aligned_on_its_own_timestamps():
    # RTP timestamps only compare within one SSRC: the new SSRC's chunks (whose
    # timestamps lie far "behind" the old stream's) must not be dropped as late
    # while the old SSRC's audio is still queued.
    def on(ssrc: int, n: int, level: int, position: int) -> PcmChunk:
        pcm = np.full((960, 2), level, np.int16)
        return PcmChunk("1", ssrc, n * 960, pcm, 48_000, time=at(position))

    lookup = {f"o{k}": on(1, 100 + k, 100, 1 + k) for k in range(4)}
    lookup |= {f"n{k}": on(9, k, 5, 3 + k) for k in range(2)}
    assert mixed_levels("-(o0,o1,o2,o3)-n0(n1)-|", lookup, delay=0.08)[0] == [100, 100, 105, 105]


# -- issue 12 item 8: what arrives late --------------------------------------------


def test_a_late_frame_at_a_spurt_start_keeps_its_tick():
    # 1 ms per position. Frames 0-4 arrive at 10 + 20 i ms, then five silence
    # frames (5-9); after a pause (the timestamp stopped), frames 10-14 from
    # 705 ms, 20 ms apart, frame 11 8 ms late. The mix used to start the spurt
    # in the very next tick, without headroom: frame 11 missed its tick (a
    # silent tick mid-speech), the rest shifted.
    events = {10 + 20 * i: [str(i)] for i in range(5)}
    events |= {10 + 20 * i: [f"{i}s"] for i in range(5, 10)}
    events |= {705 + 20 * (i - 10) + (8 if i == 11 else 0): [str(i)] for i in range(10, 15)}
    loud = {PcmChunk: lambda c: "T" if dbfs(c.pcm) > -40 else "q"}
    stats: Counter[str] = Counter()
    with voice_marbles(0.001, tokens=loud) as m:
        pcm = m.hot(diagram(events, 1000)).pipe(vops.decode_opus(), ops.share())
        mixed = pcm.pipe(vops.mix(stats=stats))
        tokens = "".join(values(m.start(mixed)))
    # (the first silence frame still rings with the tone: Opus decays, it does not cut)
    assert [run[:5] for run in tokens.split("q") if run] == ["TTTTT", "TTTTT"]
    assert tokens.strip("q").endswith("q" * 25 + "TTTTT")
    assert stats["late_chunk"] == stats["late_spurt"] == 0
    with voice_marbles(0.001) as m:
        pcm = m.hot(diagram(events, 1000)).pipe(vops.decode_opus(), ops.share())
        both = reactivex.merge(pcm, pcm.pipe(vops.mix()))
        check = check_mix(values(m.start(both, describe=False)))
    assert check.heard >= 10 and check.holes == check.mismatched == 0


def test_concealment_released_after_the_jitter_latency_is_mixed():
    # Frame 4 is lost: the jitter buffer waits 60 ms from frame 5's arrival, then
    # the concealed frame 4 and frames 5-7 come out at once, 80 ms after frame
    # 4's call time. A 40 ms delay made the mix drop them: a hard-zero hole.
    values_, tokens = mix_of_decoded("-0(1)(2)(3)-(5)(6)(7)(8)(9)-|", fec=False)
    decoded = [c for c in values_ if c.user_id is not None]
    assert [c.concealed for c in decoded] == [False] * 4 + [True] + [False] * 5
    check = check_mix(values_)
    assert check.heard == check.audible == check.loud_ticks == 10
    assert check.holes == check.mismatched == 0
    # Ten loud ticks in a row: no hole in the speech, wherever the ticks are.
    loud = "".join("T" if c.pcm.any() else "q" for c in values_ if c.user_id is None)
    assert loud.strip("q") == "T" * 10 and tokens == [f"m{k}" for k in range(len(loud))]


def test_a_lossy_call_mixes_everything_the_users_streams_hold():
    # Two users with losses of 1 to 5 frames (FEC and concealment), a pause and
    # a new spurt (the timestamps stopped meanwhile), a frame 20 ms late
    # (reordered), through a Connection's 60 ms jitter buffer.
    events: dict[int, list[str]] = {}

    def send(
        speaker: str, frames: range, first: int, lost: set[int], late: int = -1, quiet: int = 0
    ) -> None:
        # The last ``quiet`` frames are silence frames: how senders end a spurt.
        for k, n in enumerate(frames):
            if n not in lost:
                silent = "s" if k >= len(frames) - quiet else ""
                events.setdefault(first + k + (n == late), []).append(f"{speaker}{n}{silent}")

    send("", range(20), 1, {2, 5, 6, 9, 10, 11, 13, 14, 15, 16, 17}, quiet=5)
    send("", range(20, 30), 40, {23}, late=26)
    send("b", range(25), 3, {4, 10, 11, 17}, quiet=5)
    send("b", range(25, 35), 50, {28, 29})
    stats: Counter[str] = Counter()
    values_, _ = mix_of_decoded(diagram(events, 80), stats=stats)
    decoded = [c for c in values_ if c.user_id is not None]
    assert sum(c.concealed for c in decoded) >= 8 and sum(c.recovered for c in decoded) >= 5
    check = check_mix(values_)
    assert len(decoded) == 65 and check.heard == sum(bool(c.pcm.any()) for c in decoded) >= 50
    assert check.holes == check.mismatched == 0
    assert check.loud_ticks == check.audible < check.heard  # a and b overlap
    assert stats["late_chunk"] == stats["late_spurt"] == stats["duplicate_chunk"] == 0


def test_a_chunk_after_its_tick_is_counted_and_the_spurt_keeps_its_ticks():
    # Frame 2 (call time 60 ms) arrives 80 ms late, after its tick (due 100 ms):
    # dropped and counted; frame 3 still plays in tick 3.
    lookup = {f"x{n}": chunk("1", n, n + 1, time=at(1 + n)) for n in range(4)}
    levels, stats = mixed_levels("-x0(x1)--(x3)-(x2)-|", lookup, delay=0.04)
    assert levels == [1, 2, 0, 4, 0, 0, 0] and stats == Counter({"late_chunk": 1})


def test_a_spurt_whose_first_chunk_is_late_starts_at_the_next_tick():
    # b's first chunk (call time 40 ms, tick 1) arrives 60 ms late, when tick 2
    # is due: the spurt starts there (counted), the rest following.
    lookup = {f"a{n}": chunk("1", n, 1, time=at(1 + n)) for n in range(6)}
    lookup |= {f"b{n}": chunk("2", 40 + n, 10 * (n + 1), time=at(2 + n)) for n in range(3)}
    levels, stats = mixed_levels("-a0(a1)(a2)(a3)(a4,b0)(a5,b1)(b2)-|", lookup, delay=0.04)
    assert levels == [1, 1, 11, 21, 31, 1, 0] and stats == Counter({"late_spurt": 1})
