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

from rxvoice.discordpy import RxVoiceClient
from rxvoice.testing.packets import dominant_frequency, read_wav
from rxvoice.testing.sandbox import Sandbox
from tests.integration.helpers import Recorder, until_in_group

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
    cut = Recorder(example.utterances(vc.connection))
    texts: list[tuple[str, str]] = []
    posted = asyncio.Event()

    async def on_text(user_id: str, text: str) -> None:
        texts.append((user_id, text))
        if len(texts) == 2:
            posted.set()

    example.record(vc, tmp_path, on_text)

    # Turns, as people talk: 0.6 s each, and each ends with silence frames.
    for speaker in (alice, bob):
        await speaker.talk(30)
        await speaker.pause()
        await cut.wait_for(lambda us, s=speaker: any(u.user_id == s.user_id for u in us))
    await asyncio.wait_for(posted.wait(), 10)
    assert [u.user_id for u in cut.items] == [alice.user_id, bob.user_id]
    for utterance, speaker in zip(cut.items, (alice, bob), strict=True):
        assert utterance.pcm.dtype == np.int16 and utterance.pcm.ndim == 1
        # All 30 loud frames (the pre-roll keeps the one before detection), plus
        # the silence until voice activity ends.
        assert 0.6 <= utterance.seconds <= 1.0
        loud = np.flatnonzero(np.abs(utterance.pcm) > 1000)
        assert (loud[-1] - loud[0]) / 16_000 == pytest.approx(0.6, abs=0.03)
        assert dominant_frequency(utterance.pcm, 16_000) == pytest.approx(speaker.frequency, abs=5)
    assert [user for user, _ in texts] == [alice.user_id, bob.user_id]
    assert all("s of speech" in text for _, text in texts)

    await vc.disconnect()  # the connection's streams complete: the files close
    await cut.wait_for(lambda _: cut.completed)
    for speaker in (alice, bob):
        pcm, rate = read_wav(tmp_path / f"{speaker.user_id}.wav")
        assert rate == 48_000 and pcm.shape[0] >= 30 * 960
        assert dominant_frequency(pcm) == pytest.approx(speaker.frequency, abs=5)


async def test_the_example_runs_in_the_sandbox(
    example: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It points discord.py at its own sandbox: restore that afterwards.
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", DiscordWebSocket.DEFAULT_GATEWAY)
    texts = await asyncio.wait_for(example.run_in_sandbox(2, tmp_path), 30)
    assert len(texts) == 2 and all("s of speech" in text for text in texts)
    assert len(list(tmp_path.glob("*.wav"))) == 2
