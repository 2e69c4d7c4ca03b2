"""disnake (a discord.py fork) through the same adapter code; the factory for any fork."""

from __future__ import annotations

import asyncio
import sys
import types

import discord
import disnake
import pytest

from rxvoice.adapters import RxVoiceProtocol, voice_client_class
from rxvoice.discordpy import RxVoiceClient
from rxvoice.errors import UsageError
from rxvoice.shard import VoiceServerUpdate, VoiceStateUpdate
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
    # disnake's connect() has no self_deaf: with_options() carries it to op 4.
    vc = await channel.connect(cls=cls.with_options(ssl=sandbox.client_ssl(), self_deaf=True))
    assert isinstance(vc, disnake.VoiceProtocol) and isinstance(vc, cls)
    assert vc.connection.self_deaf and not vc.connection.self_mute
    assert vc.is_connected() and channel.guild.voice_client is vc and vc.channel is channel
    for speaker in (alice, bob):
        await until_in_group(vc.connection, speaker.user_id)
    frames = Recorder(vc.connection.on_audio_frame)
    await alice.talk(10)
    await bob.talk(10)
    for speaker in (alice, bob):
        expected = await hear_everything(frames, speaker)  # wait first, then look
        assert payloads_of(frames.items, speaker.user_id) == expected
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


def test_pycord_style_voice_package_and_payload_objects() -> None:
    # py-cord 2.7+: the class lives in discord.voice (discord.VoiceProtocol warns), and
    # the hooks get objects with attributes instead of dicts (no user_id: it is ours).
    class VoiceProtocol:
        def __init__(self, client: object, channel: object) -> None:
            self.client, self.channel = client, channel

    def deprecated(name: str) -> object:
        raise AssertionError(f"{name} must not be used")

    fakecord = types.ModuleType("fakecord")
    fakecord.__getattr__ = deprecated  # type: ignore[method-assign]
    voice = types.ModuleType("fakecord.voice")
    voice.VoiceProtocol = VoiceProtocol  # type: ignore[attr-defined]
    sys.modules.update({"fakecord": fakecord, "fakecord.voice": voice})
    try:
        cls = voice_client_class(fakecord)
    finally:
        del sys.modules["fakecord"], sys.modules["fakecord.voice"]
    assert issubclass(cls, VoiceProtocol)

    guild = types.SimpleNamespace(id=1, get_channel=lambda _: None)
    channel = types.SimpleNamespace(id=2, guild=guild)
    client = types.SimpleNamespace(user=types.SimpleNamespace(id=3))
    vc = cls(client, channel)
    updates = Recorder(vc.shard.voice_updates)
    state = types.SimpleNamespace(guild_id=1, channel_id=2, session_id="s", self_mute=False)
    server = types.SimpleNamespace(guild_id=1, token="t", endpoint="voice.example:443")
    asyncio.run(vc.on_voice_state_update(state))
    asyncio.run(vc.on_voice_server_update(server))
    assert updates.items == [
        VoiceStateUpdate(guild_id="1", channel_id="2", user_id="3", session_id="s"),
        VoiceServerUpdate.parse({"guild_id": "1", "token": "t", "endpoint": "voice.example:443"}),
    ]
