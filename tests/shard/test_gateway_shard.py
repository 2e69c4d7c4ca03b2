"""GatewayShard against the sandbox's main gateway: identify, heartbeats, op 4, close."""

from __future__ import annotations

import pytest

from rxvoice.errors import ConnectionClosed, UsageError
from rxvoice.shard import GatewayShard, VoiceServerUpdate, VoiceStateUpdate
from rxvoice.testing.sandbox import Sandbox
from tests.integration.helpers import Recorder, count


async def test_identify_heartbeat_voice_dispatches_and_close() -> None:
    async with Sandbox(gateway_heartbeat_interval=60.0) as sb:
        shard = GatewayShard(sb.bot_token, url=sb.gateway_url, ssl=sb.client_ssl())
        with pytest.raises(UsageError):
            await shard.update_voice_state(sb.guild_id, sb.channel_id)  # not started
        await shard.start()
        assert shard.user_id is not None
        assert sb.bot_token not in repr(shard)
        updates = Recorder(shard.voice_updates)
        await shard.update_voice_state(sb.guild_id, sb.channel_id)
        await updates.wait_for(count(2))
        state, server = updates.items
        assert isinstance(state, VoiceStateUpdate) and isinstance(server, VoiceServerUpdate)
        assert (state.user_id, state.channel_id) == (shard.user_id, sb.channel_id)
        assert server.endpoint == sb.voice_endpoint and server.guild_id == sb.guild_id
        # Heartbeats on the Hello interval (60 ms here), through the shared transport.
        await sb.wait_for(lambda: sb.counters.get("gateway_heartbeats", 0) >= 3)
        await shard.close()
        assert updates.completed
        assert not shard._ws.is_open  # the socket is released
        with pytest.raises(UsageError):
            await shard.update_voice_state(sb.guild_id, None)


async def test_a_refused_token_is_final() -> None:
    async with Sandbox() as sb:
        shard = GatewayShard("not-a-token", url=sb.gateway_url, ssl=sb.client_ssl())
        with pytest.raises(ConnectionClosed) as refused:
            await shard.start()
        assert refused.value.code == 4004
        await shard.close()
