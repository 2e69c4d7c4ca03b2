"""mix: timestamp-aligned mixing into scheduler-timed ticks."""

from __future__ import annotations

import numpy as np
import pytest

from rxvoice import operators as vops
from rxvoice.errors import UsageError
from rxvoice.events import PcmChunk
from rxvoice.testing.marbles import values, voice_marbles


def chunk(user: str, n: int, level: int, *, rate: int = 48_000) -> PcmChunk:
    """A 20 ms chunk of a constant ``level`` at frame ``n`` of ``user``."""
    samples = rate // 50
    return PcmChunk(user, int(user), n * 960, np.full((samples, 2), level, np.int16), rate)


def levels_of(records: list) -> list[int]:  # type: ignore[type-arg]
    return [int(c.pcm[0, 0]) for c in values(records)]


def test_ticks_every_20_ms_from_the_delay_after_the_first_chunk():
    lookup = {"x": chunk("1", 0, 5), "y": chunk("1", 1, 6), "z": chunk("1", 2, 7)}
    with voice_marbles() as m:
        result = m.start(m.hot("-x-y-z-|", lookup).pipe(vops.mix(delay=0.04)))
        # Ticks at 60, 80, ... ms; the source ends at 140 ms with nothing
        # queued, so that tick is the last.
        assert result == m.exp("---m0(m1)m2(m3)(m4,|)")
    with voice_marbles() as m:
        raw = m.start(m.hot("-x-y-z-|", lookup).pipe(vops.mix(delay=0.04)), describe=False)
    # Frames 0, 1, 2 in ticks 0, 1, 2 (timestamps, not arrival), then silence.
    assert levels_of(raw) == [5, 6, 7, 0, 0]


def test_users_are_aligned_on_their_timestamps_and_summed():
    # b's first chunk arrives 20 ms after a's but both are frame 0 of their
    # streams; each user is anchored at the tick open when it first arrives.
    lookup = {
        "a": chunk("1", 10, 100),
        "A": chunk("1", 11, 200),
        "b": chunk("2", 500, 1),
        "B": chunk("2", 501, 2),
    }
    with voice_marbles() as m:
        result = m.start(m.hot("-a(b)A(B)---|", lookup).pipe(vops.mix(delay=0.04)), describe=False)
    assert levels_of(result)[:3] == [101, 202, 0]


def test_silence_fill_keeps_a_users_pause():
    # Frame 2 missing: its tick is silent, frame 3 plays in its own tick.
    lookup = {"x": chunk("1", 0, 9), "y": chunk("1", 1, 8), "z": chunk("1", 3, 7)}
    with voice_marbles() as m:
        result = m.start(m.hot("-x(y)z---|", lookup).pipe(vops.mix()), describe=False)
    assert levels_of(result)[:5] == [9, 8, 0, 7, 0]


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
    with pytest.raises(UsageError):
        vops.mix(interval=0)


def test_a_users_new_ssrc_is_aligned_on_its_own_timestamps():
    # RTP timestamps only compare within one SSRC: the new SSRC's chunks (whose
    # timestamps lie far "behind" the old stream's) must not be dropped as late
    # while the old SSRC's audio is still queued.
    def on(ssrc: int, n: int, level: int) -> PcmChunk:
        return PcmChunk("1", ssrc, n * 960, np.full((960, 2), level, np.int16), 48_000)

    lookup = {f"o{k}": on(1, 100 + k, 100) for k in range(4)}
    lookup |= {f"n{k}": on(9, k, 5) for k in range(2)}
    with voice_marbles() as m:
        source = m.hot("-(o0,o1,o2,o3)---n0(n1)-|", lookup)
        result = m.start(source.pipe(vops.mix(delay=0.04)), describe=False)
    assert levels_of(result)[:5] == [100, 100, 105, 105, 0]
