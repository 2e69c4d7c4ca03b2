"""examples/discordpy_bot.py: utterances and recordings of a discord.py bot; the sandbox run."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import discord
import numpy as np
import pytest
from discord.gateway import DiscordWebSocket
from reactivex.subject import Subject

from rxvoice.discordpy import RxVoiceClient
from rxvoice.events import Utterance
from rxvoice.testing.packets import dominant_frequency, read_wav
from rxvoice.testing.sandbox import Sandbox
from tests.integration.helpers import Recorder, count, until_in_group

from .conftest import Login

EXAMPLE = Path(__file__).parents[2] / "examples" / "discordpy_bot.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("discordpy_bot", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def test_utterances_and_recordings(
    example: ModuleType, sandbox: Sandbox, login: Login, tmp_path: Path
) -> None:
    alice = await sandbox.add_speaker(440.0, talk=False)
    bob = await sandbox.add_speaker(700.0, talk=False)
    client = await login()
    channel = client.get_channel(int(sandbox.channel_id))
    vc = await channel.connect(cls=RxVoiceClient.with_options(ssl=sandbox.client_ssl()))
    for speaker in (alice, bob):
        await until_in_group(vc.connection, speaker.user_id)
    heard: list[tuple[np.ndarray, int]] = []  # what the transcriber was given

    def stt(pcm: np.ndarray, sample_rate: int) -> str:
        heard.append((pcm, sample_rate))
        return example.transcribe(pcm, sample_rate)

    texts: Subject[tuple[Utterance, str]] = Subject()
    posted = Recorder(texts)

    async def on_text(utterance: Utterance, text: str) -> None:
        texts.on_next((utterance, text))

    files = example.record(vc, tmp_path, on_text, stt)

    # Turns, as people talk: 0.6 s each, and each ends with silence frames.
    for n, speaker in enumerate((alice, bob), 1):
        await speaker.talk(30)
        await speaker.pause()
        await posted.wait_for(count(n))
    assert [u.user_id for u, _ in posted.items] == [alice.user_id, bob.user_id]
    assert all("s of speech" in text for _, text in posted.items)
    for (utterance, _), (pcm, rate), speaker in zip(posted.items, heard, (alice, bob), strict=True):
        assert rate == 16_000 and pcm.dtype == np.int16 and pcm.ndim == 1
        # All 30 loud frames, plus the silence frames after them (utterances()
        # keeps up to 0.2 s past the last loud frame); the pre-roll has nothing
        # to keep: the speaker sent nothing before.
        assert 0.6 <= len(pcm) / rate <= 1.0
        assert utterance.end - utterance.start == pytest.approx(len(pcm) / rate)
        loud = np.flatnonzero(np.abs(pcm) > 1000)
        assert (loud[-1] - loud[0]) / 16_000 == pytest.approx(0.6, abs=0.03)
        assert dominant_frequency(pcm, 16_000) == pytest.approx(speaker.frequency, abs=5)
    # Call time: bob began after alice had finished.
    (first, _), (second, _) = posted.items
    assert first.end <= second.start

    await vc.disconnect()  # the connection's streams complete: the files are finished
    paths = await asyncio.wait_for(files, 10)
    # Named after the members, as the guild knows them.
    names = [
        f"{channel.guild.get_member(int(s.user_id)).display_name}-{s.user_id}.wav"
        for s in (alice, bob)
    ]
    assert sorted(path.name for path in paths) == sorted(names)
    recordings = [read_wav(tmp_path / name) for name in names]
    # On the call's timeline: both as long as the recording, alice's talk before bob's.
    assert recordings[0][0].shape == recordings[1][0].shape
    for (pcm, rate), speaker in zip(recordings, (alice, bob), strict=True):
        assert rate == 48_000 and pcm.shape[0] >= 2 * 30 * 960
        assert dominant_frequency(pcm) == pytest.approx(speaker.frequency, abs=5)
    onsets = [np.flatnonzero(np.abs(pcm[:, 0]) > 1000)[0] / rate for pcm, rate in recordings]
    assert onsets[1] - onsets[0] >= 0.6
    # The utterances are placed on the same timeline as the files.
    assert second.start - first.start == pytest.approx(onsets[1] - onsets[0], abs=0.05)


async def test_the_example_runs_in_the_sandbox(
    example: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It points discord.py at its own sandbox: restore that afterwards.
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)
    texts = await asyncio.wait_for(example.run_in_sandbox(2, tmp_path), 30)
    assert len(texts) == 2 and all("s of speech" in text for text in texts)
    assert len(list(tmp_path.glob("*.wav"))) == 2
