"""disnake (a discord.py fork) through the same adapter code; the factory for any fork."""

from __future__ import annotations

import types

import discord
import disnake
import pytest

from rxvoice.adapters import RxVoiceProtocol, voice_client_class
from rxvoice.discordpy import RxVoiceClient
from rxvoice.errors import UsageError
from rxvoice.testing.sandbox import Sandbox
from tests.integration.helpers import Recorder, hear_everything, payloads_of, until_in_group

from .conftest import Login


async def test_a_disnake_bot_hears_two_speakers_and_leaves(sandbox: Sandbox, login: Login) -> None:
    alice = await sandbox.add_speaker(talk=False)
    bob = await sandbox.add_speaker(talk=False)
    client = await login(disnake)
    channel = client.get_channel(int(sandbox.channel_id))
    assert isinstance(channel, disnake.VoiceChannel)
    cls = voice_client_class(disnake)
    vc = await channel.connect(cls=cls.with_options(ssl=sandbox.client_ssl()))
    assert isinstance(vc, disnake.VoiceProtocol) and isinstance(vc, cls)
    assert vc.is_connected() and channel.guild.voice_client is vc and vc.channel is channel
    for speaker in (alice, bob):
        await until_in_group(vc.connection, speaker.user_id)
    frames = Recorder(vc.connection.on_audio_frame)
    await alice.talk(10)
    await bob.talk(10)
    for speaker in (alice, bob):
        assert payloads_of(frames.items, speaker.user_id) == await hear_everything(frames, speaker)
    assert vc.connection.stats.dave_failures == 0

    await vc.disconnect()
    await sandbox.wait_for(lambda: sandbox.bot_user_id not in sandbox.roster())
    assert channel.guild.voice_client is None and frames.completed


def test_one_class_per_library() -> None:
    assert voice_client_class(discord) is RxVoiceClient
    cls = voice_client_class(disnake)
    assert cls is voice_client_class(disnake)
    assert issubclass(cls, RxVoiceProtocol) and issubclass(cls, disnake.VoiceProtocol)
    assert cls.library is disnake
    with pytest.raises(UsageError, match="VoiceProtocol"):
        voice_client_class(types.ModuleType("not_a_discord_library"))
