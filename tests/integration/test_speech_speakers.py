"""The sandbox's speech voices: people-like turns, each speaker recognisable by pitch."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from rxvoice import operators as vops
from rxvoice.audio.dsp import dbfs, fundamental_frequency
from rxvoice.events import PcmChunk
from rxvoice.testing.sandbox import Sandbox, SpeechVoice, speech_pitch

from .conftest import Join
from .helpers import Recorder

SPOKEN = 25  # loud 20 ms chunks: half a second of speech


def loud(chunks: list[PcmChunk], user_id: str) -> list[PcmChunk]:
    return [c for c in chunks if c.user_id == user_id and dbfs(c.pcm) > -40]


def test_a_speech_voice_keeps_its_pitch_and_pauses_between_syllables() -> None:
    voice = SpeechVoice(speech_pitch(2), seed=3)
    pcm = np.concatenate(list(voice.phrase(1.5)))
    assert pcm.shape == (75 * 960, 2)
    assert fundamental_frequency(pcm) == pytest.approx(speech_pitch(2), rel=0.03)
    levels = [dbfs(pcm[i : i + 480]) for i in range(0, pcm.shape[0], 480)]
    assert min(levels) < -60 < max(levels)  # syllables and the pauses between them
    assert len({speech_pitch(i) for i in range(8)}) == 8


@pytest.mark.sandbox(speakers=2, voices="speech")
async def test_speech_speakers_take_turns_and_a_newcomer_speaks_next(
    sandbox: Sandbox, join: Join
) -> None:
    conn = await join()
    chunks = Recorder(conn.on_audio_frame.pipe(vops.decode_opus()))
    first, second = sandbox.speakers
    await chunks.wait_for(
        lambda cs: all(len(loud(cs, s.user_id)) >= SPOKEN for s in (first, second)), timeout=15
    )
    loop = asyncio.get_running_loop()
    joined_at = loop.time()
    newcomer = await sandbox.add_speaker()
    await chunks.wait_for(lambda cs: len(loud(cs, newcomer.user_id)) >= SPOKEN, timeout=15)

    # Its first turn comes after the turn under way (at most 2.2 s, plus a gap).
    assert loud(chunks.items, newcomer.user_id)[0].time - joined_at < 3.0
    for speaker in (first, second, newcomer):
        pcm = np.concatenate([c.pcm for c in loud(chunks.items, speaker.user_id)])
        assert fundamental_frequency(pcm) == pytest.approx(speaker.frequency, rel=0.05)
    # Turns: most of the time one speaker at a time.
    slots: dict[int, set[str]] = {}
    for c in chunks.items:
        if c.user_id is not None and dbfs(c.pcm) > -40:
            slots.setdefault(round(c.time / 0.02), set()).add(c.user_id)
    overlapping = sum(len(who) > 1 for who in slots.values())
    assert overlapping < 0.3 * len(slots)
