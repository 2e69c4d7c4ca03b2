"""decode_opus: per-SSRC decoding, concealment, FEC, resets, off-loop decoding."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from typing import Any

import numpy as np
import pytest
from reactivex.scheduler import ThreadPoolScheduler
from reactivex.subject import Subject

from rxvoice import operators as vops
from rxvoice.audio.opus import packet_has_fec
from rxvoice.events import AudioFrame, PcmChunk
from rxvoice.testing.marbles import DEFAULT_SPEAKERS, values, voice_marbles
from rxvoice.testing.packets import ToneSpeaker, audio_frame, concat, dominant_frequency, opus_tone

CORRUPT = {"x": audio_frame(3, DEFAULT_SPEAKERS["a"], b"\x03\x00")}


def test_frames_decode_to_the_speakers_tone():
    with voice_marbles() as m:
        result = m.start(m.hot("-0-1-2-3-4-b0-b1-b2-|").pipe(vops.decode_opus()), describe=False)
    chunks = values(result)
    assert all(c.pcm.shape == (960, 2) and c.pcm.dtype == np.int16 for c in chunks)
    a = concat(c for c in chunks if c.user_id == "1001")
    b = concat(c for c in chunks if c.user_id == "1002")
    assert dominant_frequency(a) == pytest.approx(440, abs=15)
    assert dominant_frequency(b) == pytest.approx(660, abs=25)
    assert [c.timestamp for c in chunks[:5]] == [0, 960, 1920, 2880, 3840]


def test_chunks_have_every_field_of_a_pcm_chunk():
    # decode_opus fills the chunk's slots directly: a field it missed would be unset.
    with voice_marbles() as m:
        (chunk,) = values(m.start(m.hot("-0-|").pipe(vops.decode_opus()), describe=False))
    fields = {f.name: getattr(chunk, f.name) for f in dataclasses.fields(PcmChunk)}
    assert fields == {
        "user_id": "1001",
        "ssrc": chunk.ssrc,
        "timestamp": 0,
        "pcm": chunk.pcm,
        "sample_rate": 48_000,
        "concealed": False,
        "recovered": False,
        "time": chunk.time,
    }
    assert chunk.ssrc is not None and chunk.time > 0.0


def test_a_single_loss_is_recovered_from_fec():
    assert packet_has_fec(opus_tone(440, 3))
    with voice_marbles() as m:
        result = m.start(m.hot("-1-3-|").pipe(vops.decode_opus()))
        assert result == m.exp("-p1-(f2,p3)-|")


def test_without_fec_the_loss_is_concealed():
    with voice_marbles() as m:
        assert m.start(m.hot("-1-3-|").pipe(vops.decode_opus(fec=False))) == m.exp("-p1-(c2,p3)-|")
    with voice_marbles() as m:  # a silence frame carries no FEC data
        assert m.start(m.hot("-1-3s-|").pipe(vops.decode_opus())) == m.exp("-p1-(c2,p3)-|")


def test_a_longer_loss_is_concealed_then_recovered_and_capped():
    with voice_marbles() as m:
        result = m.start(m.hot("-1-5-|").pipe(vops.decode_opus()))
        assert result == m.exp("-p1-(c2,c3,f4,p5)-|")
    with voice_marbles() as m:  # capped: the start is concealed, the end recovered
        result = m.start(m.hot("-1-20-|").pipe(vops.decode_opus(max_conceal=2)))
        assert result == m.exp("-p1-(c2,f19,p20)-|")
    with voice_marbles() as m:
        result = m.start(m.hot("-1-20-|").pipe(vops.decode_opus(max_conceal=2, fec=False)))
        assert result == m.exp("-p1-(c2,c3,p20)-|")


def test_gap_markers_from_the_jitter_buffer_lead_to_concealment():
    # 2 never comes: the jitter buffer declares it lost, the decoder recovers it.
    with voice_marbles() as m:
        pipeline = m.hot("-1-3-----|").pipe(vops.jitter_buffer(latency=0.06), vops.decode_opus())
        assert m.start(pipeline) == m.exp("-p1----(f2,p3)--|")


def test_loss_across_the_wraparound():
    with voice_marbles() as m:
        result = m.start(m.hot("-65535-65537-|").pipe(vops.decode_opus(fec=False)))
        assert result == m.exp("-p65535-(c65536,p65537)-|")


def test_late_and_duplicate_frames_are_dropped_and_counted():
    stats: Counter[str] = Counter()
    with voice_marbles() as m:
        result = m.start(m.hot("-1-2-2-1-3-|").pipe(vops.decode_opus(stats=stats)))
        assert result == m.exp("-p1-p2-----p3-|")
    assert stats == {"late_packet": 2}


def test_a_corrupted_packet_is_concealed_and_counted():
    stats: Counter[str] = Counter()
    seen: list[Any] = []
    with voice_marbles() as m:
        op = vops.decode_opus(stats=stats, on_diagnostic=seen.append)
        assert m.start(m.hot("-1-2-x-4-|", CORRUPT).pipe(op)) == m.exp("-p1-p2-c3-p4-|")
    assert stats == {"corrupt_packet": 1}
    assert seen[0].kind == "corrupt_packet" and seen[0].ssrc == 1


def test_a_sequence_jump_resets_the_decoder_without_concealment():
    stats: Counter[str] = Counter()
    with voice_marbles() as m:
        result = m.start(m.hot("-1-2-3000-3001-|").pipe(vops.decode_opus(stats=stats)))
        assert result == m.exp("-p1-p2-p3000-p3001-|")
    assert stats == {"decoder_reset": 1}


def test_a_frame_a_jitter_buffer_marked_resynced_resets_the_decoder():
    # A jump of 10 would be a loss; the jitter buffer saw a restart: no concealment.
    restart = dataclasses.replace(audio_frame(12, DEFAULT_SPEAKERS["a"]), resynced=True)
    stats: Counter[str] = Counter()
    with voice_marbles() as m:
        result = m.start(m.hot("-1-2-r-|", {"r": restart}).pipe(vops.decode_opus(stats=stats)))
        assert result == m.exp("-p1-p2-p12-|")
    assert stats == {"decoder_reset": 1}


def test_the_jitter_buffers_restart_flag_reaches_the_decoder():
    # The decoder alone (max_gap 10000) would take the jump for a loss and conceal it.
    with voice_marbles() as m:
        decode = vops.decode_opus(max_gap=10_000)
        frames = m.hot("-1-2-5000-5001-|").pipe(vops.jitter_buffer(), decode)
        assert m.start(frames) == m.exp("-p1-p2---(p5000,p5001)-|")


def test_a_new_ssrc_gets_a_fresh_decoder():
    speakers = {**DEFAULT_SPEAKERS, "A": ToneSpeaker("1001", 11, 440.0)}
    with voice_marbles(speakers=speakers) as m:
        # No concealment between SSRCs although A5 is "ahead" of 2.
        result = m.start(m.hot("-1-2-A5-A6-|").pipe(vops.decode_opus()))
        assert result == m.exp("-p1-p2-Ap5-Ap6-|")


def test_stragglers_of_an_old_ssrc_do_not_restart_the_decoders():
    speakers = {**DEFAULT_SPEAKERS, "A": ToneSpeaker("1001", 11, 440.0)}
    stats: Counter[str] = Counter()
    with voice_marbles(speakers=speakers) as m:
        # 3 (old SSRC) arrives after the switch: its own decoder carries on
        # (no loss before it), and the new SSRC's decoder keeps its state, so
        # the loss of A3 is concealed; later frames of both keep decoding.
        source = m.hot("-1-2-A1-3-A2-A4-4-A5-|")
        result = m.start(source.pipe(vops.decode_opus(stats=stats)))
        assert result == m.exp("-p1-p2-Ap1-p3-Ap2-(Af3,Ap4)-p4-Ap5-|")
    assert stats == {}


def test_a_raising_diagnostic_callback_errors_the_pipeline():
    boom = RuntimeError("boom")

    def explode(_: object) -> None:
        raise boom

    with voice_marbles() as m:
        op = vops.decode_opus(on_diagnostic=explode)
        assert m.start(m.hot("-1-x-4-|", CORRUPT).pipe(op)) == m.exp("-p1-#", error=boom)


def test_decoding_on_a_scheduler_keeps_each_users_order():
    with voice_marbles() as m:
        op = vops.decode_opus(decode_on=m.scheduler)
        result = m.start(m.hot("-1-b1-(2,b2,3)-b4-|").pipe(op))
        # One drain per user: a's queued frames decode together, then b's.
        assert result == m.exp("-p1-bp1-(p2,p3,bp2)-(bf3,bp4)-|")


def test_decoding_on_a_thread_pool():
    speakers = [DEFAULT_SPEAKERS[name] for name in "abc"]
    subject: Subject[AudioFrame] = Subject()
    out: list[PcmChunk] = []
    done = threading.Event()
    pool = ThreadPoolScheduler(3)
    subject.pipe(vops.decode_opus(decode_on=pool)).subscribe(
        out.append, lambda e: done.set(), done.set
    )
    for n in range(30):
        for speaker in speakers:
            subject.on_next(audio_frame(n, speaker))
    subject.on_completed()
    assert done.wait(10)
    pool.executor.shutdown()
    for speaker in speakers:
        mine = [c for c in out if c.ssrc == speaker.ssrc]
        assert [c.timestamp // 960 for c in mine] == list(range(30))
        assert not any(c.concealed for c in mine)


def test_a_stream_back_after_a_minute_starts_with_a_fresh_decoder():
    # Its state is forgotten after a minute without packets (SSRCs churn in a
    # long call), so the pause is not "concealed" as a loss.
    with voice_marbles() as m:
        frames = [m.frame(1, at=0.0), m.frame(2, at=0.02), m.frame(5, at=70.0)]
    subject: Subject[AudioFrame] = Subject()
    chunks: list[PcmChunk] = []
    subject.pipe(vops.decode_opus()).subscribe(chunks.append)
    for frame in frames:
        subject.on_next(frame)
    assert [(c.timestamp // 960, c.concealed or c.recovered) for c in chunks] == [
        (1, False),
        (2, False),
        (5, False),
    ]
