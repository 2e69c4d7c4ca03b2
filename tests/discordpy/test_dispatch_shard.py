"""DispatchShard: the public Shard any library's gateway can feed."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from rxvoice.adapters import DispatchShard
from rxvoice.errors import UsageError
from rxvoice.shard import Shard, VoiceServerUpdate, VoiceStateUpdate
from tests.integration.helpers import Recorder

STATE = {"guild_id": "1", "channel_id": "2", "user_id": "3", "session_id": "s"}
SERVER = {"guild_id": 1, "token": "secret-token", "endpoint": "voice.example:443"}


async def test_feed_emits_the_voice_dispatches_and_sends_op4(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent: list[tuple[Any, ...]] = []

    async def send(
        guild_id: str, channel_id: str | None, *, self_mute: bool, self_deaf: bool
    ) -> None:
        sent.append((guild_id, channel_id, self_mute, self_deaf))

    me: list[int | None] = [None]
    shard = DispatchShard(send, user_id=lambda: me[0])
    assert isinstance(shard, Shard)
    assert shard.user_id is None
    me[0] = 3
    assert shard.user_id == "3"
    updates = Recorder(shard.voice_updates)

    assert shard.feed("MESSAGE_CREATE", {"content": "hi"}) is None
    state = shard.feed("VOICE_STATE_UPDATE", STATE)
    server = shard.feed("VOICE_SERVER_UPDATE", SERVER)
    assert isinstance(state, VoiceStateUpdate) and state.channel_id == "2"
    assert isinstance(server, VoiceServerUpdate) and server.guild_id == "1"
    assert updates.items == [state, server]
    assert "secret-token" not in repr(server)

    # Malformed dispatches are logged and counted, never raised, never emitted.
    with caplog.at_level(logging.WARNING):
        assert shard.feed("VOICE_SERVER_UPDATE", {"guild_id": "1"}) is None
        assert shard.feed("VOICE_STATE_UPDATE", [1, 2]) is None
        # Integer ids that are no snowflake (str() of a 5000-digit int raises).
        assert shard.feed("VOICE_STATE_UPDATE", {**STATE, "user_id": 10**5000}) is None
        assert shard.feed("VOICE_STATE_UPDATE", {**STATE, "guild_id": -1}) is None
    assert shard.malformed == 4 and len(updates.items) == 2
    assert "malformed VOICE_SERVER_UPDATE" in caplog.text

    await shard.update_voice_state("1", "2", self_deaf=True)
    await shard.update_voice_state("1", None)
    assert sent == [("1", "2", False, True), ("1", None, False, False)]

    shard.close()
    shard.close()
    assert updates.completed
    assert shard.feed("VOICE_STATE_UPDATE", STATE) is None
    with pytest.raises(UsageError):
        await shard.update_voice_state("1", None)


def test_a_fixed_user_id() -> None:
    async def send(
        guild_id: str, channel_id: str | None, *, self_mute: bool, self_deaf: bool
    ) -> None:
        raise AssertionError("not called")

    assert DispatchShard(send, user_id=42).user_id == "42"
    assert "42" in repr(DispatchShard(send, user_id="42"))
