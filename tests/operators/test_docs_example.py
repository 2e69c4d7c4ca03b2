"""The worked example of docs/testing-pipelines.md, kept working."""

from __future__ import annotations

from typing import Any

import pytest
from reactivex import GroupedObservable, Observable
from reactivex import operators as ops

from rxvoice import operators as vops
from rxvoice.events import (
    AudioFrame,
    AudioLevel,
    ClientDisconnect,
    PcmChunk,
    SpeakingEvent,
    SpeakingFlags,
    VoiceActivityChange,
)
from rxvoice.testing.marbles import values, voice_marbles
from rxvoice.testing.packets import concat, dominant_frequency


def who_is_talking(frames: Observable[AudioFrame]) -> Observable[VoiceActivityChange]:
    """Speech start/stop per user, from raw (unordered) frames."""
    return frames.pipe(
        vops.jitter_buffer(latency=0.06),
        vops.decode_opus(),
        vops.voice_activity(),
    )


def speech_for_asr(frames: Observable[AudioFrame]) -> Observable[PcmChunk]:
    """16 kHz mono chunks of 100 ms for a speech recogniser."""
    return frames.pipe(
        vops.decode_opus(),
        vops.to_mono(),
        vops.resample(16_000),
        vops.buffer_duration(0.1),
    )


def test_speech_starts_and_stops_when_packets_stop():
    with voice_marbles() as m:
        frames = m.hot("-0-1-2-3-4-5----------------------------|")
        result = m.start(who_is_talking(frames))
        # Speaking from frame 0 (known at the second loud frame); Discord
        # clients stop sending when quiet, so 300 ms after frame 5 (at 220 ms)
        # the user is declared stopped, at the end of frame 5.
        assert m.render(result) == "---on0----------------------off6-------------|"


def test_a_lost_packet_does_not_cut_speech():
    with voice_marbles() as m:
        # Two speakers; frame 2 of speaker a is lost.
        frames = m.hot("-(0,b0)-(1,b1)-(3,b2)-(4,b3)-(5,b4)-|")
        result = m.start(who_is_talking(frames))
        assert result == m.exp("---(on0,bon0)-------|")


def test_speech_chunks_are_16khz_mono_and_carry_the_voice():
    with voice_marbles() as m:
        frames = m.hot("-0-1-2-3-4-5-6-7-8-9-|")
        chunks = values(m.start(speech_for_asr(frames), describe=False))
    assert [(c.sample_rate, c.pcm.shape) for c in chunks] == [(16_000, (1600, 1))] * 2
    # Speaker a sends a 440 Hz tone.
    assert dominant_frequency(concat(chunks), 16_000) == pytest.approx(440, abs=10)


def test_group_pipelines():
    def labelled(group: GroupedObservable[str | None, Any]) -> Observable[str]:
        return group.pipe(ops.map(lambda item: f"{group.key}:{m.describe(item)}"))

    with voice_marbles(payload="silence") as m:
        frames = m.hot("-1-b1-2-|")
        leaves = m.hot("----L---", {"L": ClientDisconnect("1001")})
        result = m.start(frames.pipe(vops.group_by_user(leaves), ops.flat_map(labelled)))
        assert m.render(result) == "-1001:1-1002:b1-1001:2-|"


def test_levels_say_loud_or_quiet():
    with voice_marbles() as m:
        m.tokens[AudioLevel] = lambda level: "loud" if level.dbfs > -30 else "quiet"
        # Frames 0 and 1 of speaker a are Opus silence frames; frame 2 carries its tone.
        result = m.start(m.hot("-0s-1s-2-|").pipe(vops.decode_opus(), vops.levels()))
        assert m.render(result) == "-quiet-quiet-loud-|"


def test_speaking_events_in_a_diagram():
    def speaking(event: SpeakingEvent) -> str:
        return f"{m.prefix(event.user_id, event.ssrc)}s{int(event.flags)}"

    with voice_marbles(tokens={SpeakingEvent: speaking}) as m:
        talk = SpeakingEvent("1002", 2, SpeakingFlags.MICROPHONE)
        assert m.render(m.start(m.hot("-x-|", {"x": talk}))) == "-bs1-|"


def test_two_pipelines_on_the_same_diagram():
    diagram = "-1-3-2-|"
    with voice_marbles() as m:
        assert m.render(m.start(m.hot(diagram).pipe(vops.jitter_buffer()))) == "-1---(2,3)-|"
    with voice_marbles() as m:
        assert m.render(m.start(m.hot(diagram))) == "-1-3-2-|"
