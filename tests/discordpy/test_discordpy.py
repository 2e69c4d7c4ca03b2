"""A real discord.py bot in the sandbox: RxVoiceClient joins, hears, talks, moves and leaves."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import discord
import numpy as np
import pytest
from reactivex.subject import Subject

from rxvoice import operators as vops
from rxvoice.audio.opus import OpusDecoder
from rxvoice.discordpy import RxVoiceClient
from rxvoice.errors import DaveRequired, UsageError
from rxvoice.events import ConnectionState, PcmChunk
from rxvoice.protocol.rtp import SILENCE_FRAME
from rxvoice.testing.packets import concat, dominant_frequency, opus_tone, tone_pcm
from rxvoice.testing.sandbox import Sandbox, Speaker
from tests.integration.helpers import Recorder, count, hear_everything, payloads_of, until_in_group

from .conftest import Login

HANDSHAKE = [
    ConnectionState.IDLE,
    ConnectionState.CONNECTING,
    ConnectionState.IDENTIFYING,
    ConnectionState.DISCOVERING,
    ConnectionState.SELECTING_PROTOCOL,
    ConnectionState.READY,
]


def voice(sandbox: Sandbox, **options: Any) -> Any:
    """The ``cls=`` for ``channel.connect``: RxVoiceClient trusting the sandbox's TLS."""
    return RxVoiceClient.with_options(ssl=sandbox.client_ssl(), **options)


def pitch(chunks: list[PcmChunk], user_id: str) -> float:
    pcm = concat([c for c in chunks if c.user_id == user_id])
    return dominant_frequency(pcm[960 * 5 :])  # past the decoder's first frames


async def settle(sandbox: Sandbox, vc: RxVoiceClient, speakers: list[Speaker]) -> None:
    """Wait until the bot and the speakers share one DAVE epoch."""
    for speaker in speakers:
        await until_in_group(vc.connection, speaker.user_id)
    service = sandbox.dave(vc.connection.channel_id)
    assert service is not None
    await sandbox.wait_for(lambda: not service.pending_transitions)
    await sandbox.wait_for(lambda: all(s.epoch == service.epoch for s in speakers))


async def test_bot_hears_two_speakers_through_dave_and_is_heard(
    sandbox: Sandbox, login: Login
) -> None:
    # Both speakers listen: each receives and DAVE-decrypts what the bot sends.
    alice = await sandbox.add_speaker(440.0, talk=False, listen=True)
    bob = await sandbox.add_speaker(700.0, talk=False, listen=True)
    client = await login()
    channel = client.get_channel(int(sandbox.channel_id))
    assert isinstance(channel, discord.VoiceChannel)
    seen: dict[str, Recorder[Any]] = {}

    def setup(vc: RxVoiceClient) -> None:
        # Called before the join: the whole handshake is observable.
        assert vc.connection.current_state is ConnectionState.IDLE
        seen["states"] = Recorder(vc.connection.state)
        seen["ready"] = Recorder(vc.connection.on_ready)
        seen["pcm"] = Recorder(vc.connection.on_audio_frame.pipe(vops.decode_opus()))

    vc = await channel.connect(cls=voice(sandbox, setup=setup))
    assert isinstance(vc, RxVoiceClient)
    assert seen["states"].items == HANDSHAKE and seen["ready"].items == [None]
    assert vc.is_connected() and channel.guild.voice_client is vc
    assert vc.channel is channel and vc.guild is channel.guild and vc.user == client.user
    assert vc.connection.user_id == str(client.user.id) == sandbox.bot_user_id
    assert set(sandbox.roster()) == {alice.user_id, bob.user_id, sandbox.bot_user_id}

    # Both speakers, through DAVE: every frame bit-exact, each at its own pitch.
    await settle(sandbox, vc, [alice, bob])
    frames = Recorder(vc.connection.on_audio_frame)
    await asyncio.gather(alice.talk(50), bob.talk(50))
    for speaker in (alice, bob):
        expected = await hear_everything(frames, speaker)  # wait first, then look
        assert payloads_of(frames.items, speaker.user_id) == expected
    pcm: list[PcmChunk] = seen["pcm"].items
    assert pitch(pcm, alice.user_id) == pytest.approx(440.0, abs=5)
    assert pitch(pcm, bob.user_id) == pytest.approx(700.0, abs=5)
    assert vc.connection.dave is not None and vc.connection.dave.stats.decrypted >= 100
    assert vc.connection.stats.dave_failures == 0

    # discord.py's latency: the last voice heartbeat's round trip, in seconds.
    beats = Recorder(vc.connection.on_heartbeat)
    await beats.wait_for(count(1))
    assert 0 < vc.latency < 1 and 0 < vc.average_latency < 1

    # The bot talks; both speakers hear every frame bit-exact, DAVE-encrypted end to
    # end (each with its own DAVE session, not rxvoice's).
    sent = [opus_tone(523.0, i) for i in range(50)]
    assert await vc.play_opus(sent) == 50
    bot = sandbox.bot_user_id
    await sandbox.wait_for(lambda: all(len(s.heard[bot]) >= 55 for s in (alice, bob)))
    for speaker in (alice, bob):
        heard = list(speaker.heard[bot])
        assert [f.opus for f in heard] == [*sent, *[SILENCE_FRAME] * 5]
        assert [f.dave for f in heard] == [True] * 50 + [False] * 5  # silence goes plain
        assert [f.sequence for f in heard] == [(heard[0].sequence + i) & 0xFFFF for i in range(55)]
        assert speaker.heard_errors == 0
    assert vc.connection.dave.stats.encrypted == 50

    # discord.py's own API: vc.play(AudioSource) with PCM, encoded by rxvoice.
    before = len(alice.heard[bot])
    tone = np.concatenate([tone_pcm(660.0, i) for i in range(40)])
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[Exception | None] = loop.create_future()
    vc.play(discord.PCMAudio(io.BytesIO(tone.tobytes())), after=finished.set_result)
    assert vc.is_playing() and not vc.is_paused()
    with pytest.raises(discord.ClientException):
        vc.play(discord.PCMAudio(io.BytesIO(b"")))
    assert await finished is None
    assert not vc.is_playing() and vc.source is None
    await sandbox.wait_for(lambda: len(alice.heard[bot]) >= before + 45)  # 40, then 5 silent
    decoder = OpusDecoder()
    played = [decoder.decode(f.opus) for f in list(alice.heard[bot])[before:]]
    assert dominant_frequency(np.concatenate(played[5:])) == pytest.approx(660.0, abs=5)


class ToneSource(discord.AudioSource):
    """An endless Opus source at 330 Hz; ``await source.reads(n)`` waits for the n-th read."""

    def __init__(self) -> None:
        self.index, self.cleaned = 0, False
        self._loop = asyncio.get_running_loop()
        self._reads: Subject[int] = Subject()
        self._read = Recorder(self._reads)

    def read(self) -> bytes:  # in a worker thread, as discord.py's player does
        self.index += 1
        self._loop.call_soon_threadsafe(self._reads.on_next, self.index)
        return opus_tone(330.0, self.index)

    def is_opus(self) -> bool:
        return True

    def cleanup(self) -> None:
        self.cleaned = True

    async def reads(self, n: int) -> None:
        await self._read.wait_for(lambda items: len(items) >= n)


async def test_play_pause_resume_swap_and_stop(sandbox: Sandbox, login: Login) -> None:
    client = await login()
    channel = client.get_channel(int(sandbox.channel_id))
    vc = await channel.connect(cls=voice(sandbox))
    source = ToneSource()
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[Exception | None] = loop.create_future()
    with pytest.raises(TypeError):
        vc.play(b"not a source")
    vc.play(source, after=finished.set_result)
    assert vc.source is source and vc.is_playing()
    await source.reads(3)
    vc.pause()
    assert vc.is_paused() and not vc.is_playing()
    vc.resume()
    assert vc.is_playing()
    read = source.index
    await source.reads(read + 2)  # it goes on after the pause
    replacement = ToneSource()
    vc.source = replacement  # discord.py lets a playing source be swapped
    await replacement.reads(2)
    vc.stop()
    assert await finished is None
    assert replacement.cleaned and not vc.is_playing() and vc.source is None
    assert vc.connection.stats.frames_sent >= 5


async def test_server_move_move_to_endpoint_null_and_leave(sandbox: Sandbox, login: Login) -> None:
    client = await login()
    first = client.get_channel(int(sandbox.channel_ids[0]))
    second = client.get_channel(int(sandbox.channel_ids[1]))
    assert isinstance(second, discord.VoiceChannel)
    vc = await first.connect(cls=voice(sandbox))
    readies = Recorder(vc.connection.on_ready)
    closes = Recorder(vc.connection.on_disconnected)
    bot = sandbox.bot_user_id

    # A moderator drags the bot to the other channel: a new voice session there.
    other = await sandbox.add_speaker(talk=False, channel_id=str(second.id))
    assert sandbox.move(bot, str(second.id))
    await readies.wait_for(count(1))
    assert vc.channel is second and vc.connection.channel_id == str(second.id)
    assert vc.is_connected() and first.guild.voice_client is vc
    assert bot in sandbox.roster(str(second.id)) and bot not in sandbox.roster(str(first.id))
    await settle(sandbox, vc, [other])
    frames = Recorder(vc.connection.on_audio_frame)
    await other.talk(10)
    expected = await hear_everything(frames, other)  # wait first, then look
    assert payloads_of(frames.items, other.user_id) == expected

    # The bot moves itself back, as with discord.py's VoiceClient.move_to.
    await vc.move_to(first)
    assert vc.channel is first and vc.connection.channel_id == str(first.id)
    assert bot in sandbox.roster(str(first.id)) and vc.is_connected()
    await vc.move_to(first)  # already there: nothing to do
    assert len(readies.items) == 2

    # The voice server goes away (endpoint null), then a new one is allocated.
    states = Recorder(vc.connection.state)
    assert sandbox.endpoint_null(bot)
    await states.wait_for(lambda s: s[-1] is ConnectionState.RECONNECTING)
    assert not vc.is_connected() and first.guild.voice_client is vc
    assert sandbox.server_update(bot)
    await readies.wait_for(count(3))
    assert vc.is_connected() and vc.channel is first
    assert all(close.will_reconnect for close in closes.items)

    # Leaving through discord.py's API.
    completed = Recorder(vc.connection.on_audio_frame)
    await vc.disconnect()
    await sandbox.wait_for(lambda: bot not in sandbox.roster(str(first.id)))
    assert first.guild.voice_client is None and not vc.is_connected()
    assert vc.connection.current_state is ConnectionState.CLOSED
    assert vc.latency == float("inf")
    await completed.wait_for(lambda _: completed.completed)
    await vc.disconnect()  # again: nothing


async def test_kick_ends_the_voice_client_and_the_bot_can_join_again(
    sandbox: Sandbox, login: Login
) -> None:
    client = await login()
    channel = client.get_channel(int(sandbox.channel_id))
    vc = await channel.connect(cls=voice(sandbox))
    closes = Recorder(vc.connection.on_disconnected)
    frames = Recorder(vc.connection.on_audio_frame)
    bot = sandbox.bot_user_id

    sandbox.leave(bot)  # kicked: our voice state goes null, the voice session 4014
    await frames.wait_for(lambda _: frames.completed)
    assert channel.guild.voice_client is None and not vc.is_connected()
    assert closes.items[-1].will_reconnect is False

    # Nothing of the old client is left: joining again works, and the old
    # client's disconnect() does not disturb the new one.
    again = await channel.connect(cls=voice(sandbox))
    assert again is not vc and again.is_connected()
    await vc.disconnect(force=True)
    assert channel.guild.voice_client is again and again.is_connected()
    assert bot in sandbox.roster()
    await again.disconnect()


async def test_a_4014_without_a_new_server_ends_the_client(sandbox: Sandbox, login: Login) -> None:
    client = await login()
    channel = client.get_channel(int(sandbox.channel_id))
    vc = await channel.connect(cls=voice(sandbox, move_timeout=0.2))
    states = Recorder(vc.connection.state)
    assert sandbox.force_close(sandbox.bot_user_id, 4014)
    await states.wait_for(lambda s: s[-1] is ConnectionState.CLOSED)
    assert channel.guild.voice_client is None


@pytest.mark.sandbox(require_dave=True)
async def test_a_refused_join_raises_and_leaves(sandbox: Sandbox, login: Login) -> None:
    client = await login()
    channel = client.get_channel(int(sandbox.channel_id))
    # op 4 puts the bot in the channel; the failed client must take it out again.
    left = asyncio.ensure_future(
        client.wait_for(
            "voice_state_update",
            check=lambda member, before, after: (
                member == channel.guild.me and after.channel is None
            ),
        )
    )
    with pytest.raises(DaveRequired):
        await channel.connect(cls=voice(sandbox, max_dave_protocol_version=0))
    assert channel.guild.voice_client is None
    await asyncio.wait_for(left, 10)
    assert channel.guild.me.voice is None


def test_with_options_refuses_what_the_client_sets() -> None:
    with pytest.raises(Exception, match="channel_id"):
        RxVoiceClient.with_options(channel_id="1")
    with pytest.raises(Exception, match="token"):
        RxVoiceClient.with_options(token="x")
    with pytest.raises(UsageError, match="jitter_latncy"):  # misspelt: now, not at connect()
        RxVoiceClient.with_options(jitter_latncy=0.1)
