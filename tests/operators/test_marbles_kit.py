"""The marble kit itself: timing, tokens, sources and descriptions."""

from __future__ import annotations

import numpy as np
import pytest
from reactivex.notification import OnCompleted, OnError, OnNext
from reactivex.testing import ReactiveTest

from rxvoice.errors import InvalidArgument, UsageError
from rxvoice.events import (
    AudioFrame,
    AudioGap,
    AudioLevel,
    PcmChunk,
    SpeakingEvent,
    SpeakingFlags,
    VoiceActivityChange,
)
from rxvoice.protocol.crypto import EncryptionMode, TransportCipher
from rxvoice.protocol.rtp import SILENCE_FRAME
from rxvoice.testing.marbles import DEFAULT_SPEAKERS, parse, voice_marbles
from rxvoice.testing.packets import ToneSpeaker, audio_frame, opus_tone

on_next, on_completed = ReactiveTest.on_next, ReactiveTest.on_completed


def test_every_element_and_group_lasts_one_position():
    parsed = parse("-12-(4,b4)-|", timespan=0.02)
    assert [(round(t * 1000), n) for t, n in parsed] == [
        (20, OnNext(12)),
        (60, OnNext(4)),
        (60, OnNext("b4")),
        (100, OnCompleted()),
    ]


def test_error_and_bad_comma():
    boom = ValueError("boom")
    [(_, notification)] = parse("--#", error=boom)
    assert isinstance(notification, OnError) and notification.exception is boom
    with pytest.raises(InvalidArgument, match="comma"):
        parse("-1,2-")
    with pytest.raises(ValueError, match="comma"):  # still a ValueError, as before
        parse("-1,2-")


@pytest.mark.parametrize("diagram", ["-(1-2-|", "-1)-|", "-((1,2))-|", "-1-|("])
def test_unbalanced_or_nested_groups_are_refused(diagram: str):
    with pytest.raises(InvalidArgument, match="parenthesis"):
        parse(diagram)


def test_hot_frames_are_built_from_tokens():
    with voice_marbles() as m:
        result = m.start(m.hot("-1-b65536-2s-|"), describe=False)
    times = [r.time for r in result]
    assert times == [20, 60, 100, 140]
    first, second, third = (r.value.value for r in result[:3])
    assert isinstance(first, AudioFrame)
    assert (first.user_id, first.ssrc, first.sequence, first.timestamp) == ("1001", 1, 1, 960)
    assert first.opus == opus_tone(440.0, 1)
    assert first.received_at == pytest.approx(200.02)
    assert (second.user_id, second.sequence, second.timestamp) == ("1002", 0, 65536 * 960)
    assert third.opus == SILENCE_FRAME


def test_cold_starts_at_each_subscription_and_lookup_wins():
    with voice_marbles() as m:
        source = m.cold("1-x-|", lookup={"x": "leave"})
        assert m.start(source) == m.exp("1-x-|", lookup={"x": "leave"})


def test_exp_matches_described_output_and_times_are_ms():
    with voice_marbles() as m:
        assert m.exp("-1-(b2,g3)-|") == [
            on_next(20, 1),
            on_next(60, "b2"),
            on_next(60, "g3"),
            on_completed(100),
        ]


def test_describe_tokens():
    speakers = {**DEFAULT_SPEAKERS, "A": ToneSpeaker("1001", 11)}
    with voice_marbles(speakers=speakers) as m:
        b = DEFAULT_SPEAKERS["b"]
        pcm = np.zeros((960, 2), np.int16)
        assert m.describe(audio_frame(7, DEFAULT_SPEAKERS["a"])) == 7
        assert m.describe(audio_frame(7, speakers["A"])) == "A7"
        assert m.describe(AudioGap("1002", 2, 5, 3, 5 * 960)) == "bg5x3"
        assert m.describe(AudioGap("1001", 1, 5, 1, 5 * 960)) == "g5"
        assert m.describe(PcmChunk("1001", 1, 960, pcm)) == "p1"
        assert m.describe(PcmChunk("1001", 1, 960, pcm, concealed=True)) == "c1"
        assert m.describe(PcmChunk(b.user_id, b.ssrc, 960, pcm, recovered=True)) == "bf1"
        assert m.describe(PcmChunk(None, None, 3 * 960, pcm)) == "m3"
        assert m.describe(VoiceActivityChange("1001", 1, True, 960)) == "on1"
        assert m.describe(VoiceActivityChange("1002", 2, False, 960)) == "boff1"
        assert m.describe("other") == "other"


def test_cipher_turns_frames_into_datagrams():
    cipher = TransportCipher(EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE, bytes(32))
    with voice_marbles(payload="silence") as m:
        result = m.start(m.hot("-1-|", cipher=cipher), describe=False)
    datagram = result[0].value.value
    assert isinstance(datagram, bytes)
    packet = cipher.open(datagram)
    assert packet.header.sequence == 1 and packet.payload == SILENCE_FRAME


def test_custom_payload_function():
    with voice_marbles(payload=lambda speaker, n: bytes([n])) as m:
        assert m.frame("b9").opus == b"\x09"
    with voice_marbles() as m, pytest.raises(InvalidArgument, match="known speaker"):
        m.frame("z1")


def test_render_is_the_inverse_of_exp():
    with voice_marbles() as m:
        for diagram in ("-1-(2,3)-|", "-p1(p2)p3-#", "---m0(m1)m2(m3)(m4,|)", ""):
            assert m.render(m.exp(diagram)) == diagram
        with pytest.raises(InvalidArgument, match="between two positions"):
            m.render([on_next(30, 1)])


def test_render_shows_a_pipeline_run():
    from rxvoice import operators as vops

    with voice_marbles(payload="silence") as m:
        result = m.start(m.hot("-1-3-2-|").pipe(vops.jitter_buffer()))
        assert m.render(result) == "-1---(2,3)-|"


def test_a_second_start_in_one_block_fails_loudly():
    with voice_marbles() as m:
        source = m.hot("-1-2-|")
        assert m.render(m.start(source)) == "-1-2-|"
        with pytest.raises(UsageError, match="new `with voice_marbles"):
            m.start(source)
    with voice_marbles() as m:  # a new block runs again, from the same diagram
        assert m.render(m.start(m.hot("-1-2-|"))) == "-1-2-|"


def test_default_speakers_are_documented_users():
    assert {n: (s.user_id, s.ssrc, s.frequency) for n, s in DEFAULT_SPEAKERS.items()} == {
        "a": ("1001", 1, 440.0),
        "b": ("1002", 2, 660.0),
        "c": ("1003", 3, 880.0),
    }


def test_levels_have_tokens():
    with voice_marbles() as m:
        assert m.describe(AudioLevel("1001", 1, 2 * 960, 0.1, -20.0)) == "l2"
        assert m.describe(AudioLevel("1002", 2, 2 * 960, 0.1, -20.0)) == "bl2"
        assert m.describe(AudioLevel(None, None, 3 * 960, 0.1, -20.0)) == "ml3"


def test_tests_give_tokens_to_any_type_and_override_built_ins():
    def speaking(event: SpeakingEvent) -> str:
        return f"{m.prefix(event.user_id, event.ssrc)}s"

    with voice_marbles(tokens={SpeakingEvent: speaking}) as m:
        m.tokens[AudioLevel] = lambda level: "loud" if level.dbfs > -30 else "soft"
        talk = SpeakingEvent("1002", 2, SpeakingFlags.MICROPHONE)
        levels = {"L": AudioLevel("1001", 1, 0, 0.5, -6.0), "Q": AudioLevel("1001", 1, 0, 0, -60)}
        result = m.start(m.hot("-S-L-Q-|", {"S": talk, **levels}))
        assert m.render(result) == "-bs-loud-soft-|"
        assert m.prefix("1003", 3) == "c" and m.prefix("1001", 99) == ""


def test_render_refuses_values_without_a_token():
    talk = SpeakingEvent("1002", 2, SpeakingFlags.MICROPHONE)
    with voice_marbles() as m:
        result = m.start(m.hot("-S-|", {"S": talk}))
        with pytest.raises(InvalidArgument, match=r"m\.tokens\[SpeakingEvent\]"):
            m.render(result)
        with pytest.raises(InvalidArgument, match="no marble token"):
            m.render(m.exp("-x-", {"x": "two words"}))
