"""GatewayShard against the sandbox's main gateway: identify, resume, zombies, close codes."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rxvoice.errors import ConnectionClosed, GatewayClosed, UsageError
from rxvoice.shard import GatewayShard, VoiceServerUpdate, VoiceStateUpdate, VoiceUpdate
from rxvoice.shard.backoff import Backoff
from rxvoice.shard.gateway import FATAL_CLOSE_CODES
from rxvoice.testing.sandbox import Sandbox
from tests.integration.helpers import Recorder, count
from tests.shard.test_frames import MALFORMED


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


@contextlib.asynccontextmanager
async def _running(
    backoff: Backoff | None = None, **options: Any
) -> AsyncIterator[tuple[Sandbox, GatewayShard, str]]:
    """A sandbox and a started shard: ``(sandbox, shard, the bot's user id)``."""
    async with Sandbox(dave=False, **options) as sb:
        # Tiny, seeded delays: failed attempts in a row stay fast and reproducible.
        backoff = backoff or Backoff(base=0.01, cap=0.05, rng=random.Random(0))
        shard = GatewayShard(sb.bot_token, url=sb.gateway_url, ssl=sb.client_ssl(), backoff=backoff)
        await shard.start()
        assert shard.user_id is not None
        try:
            yield sb, shard, shard.user_id
        finally:
            await shard.close()


async def _joined(sb: Sandbox, shard: GatewayShard) -> Recorder[VoiceUpdate]:
    """Op 4 answered: the shard is online and has handled every frame sent before."""
    updates: Recorder[VoiceUpdate] = Recorder(shard.voice_updates)
    await shard.update_voice_state(sb.guild_id, sb.channel_id)
    await updates.wait_for(count(2))
    return updates


async def test_a_dropped_connection_resumes_and_gets_what_it_missed() -> None:
    async with _running() as (sb, shard, user_id):
        session = shard.session_id
        updates = await _joined(sb, shard)
        assert sb.main_gateway.drop(user_id)  # TCP drop, no close frame
        assert sb.server_update(user_id)  # dispatched while the bot is away
        await updates.wait_for(count(3))
        assert isinstance(updates.items[-1], VoiceServerUpdate)
        counters = sb.counters
        assert counters["gateway_resumed"] == 1 and counters["gateway_replayed"] >= 1
        assert counters["gateway_resume_url_connections"] == 1  # READY's resume_gateway_url
        assert counters["gateway_identified"] == 1  # no new Identify
        assert shard.session_id == session
        assert (shard.stats.identifies, shard.stats.resumes, shard.stats.connections) == (1, 1, 2)
        # Op 4 works on the resumed connection.
        await shard.update_voice_state(sb.guild_id, None)
        await updates.wait_for(
            lambda items: isinstance(items[-1], VoiceStateUpdate) and items[-1].channel_id is None
        )


# What makes the shard resume: op 7, op 9 "resumable", a close code that keeps the session.
RESUME_TRIGGERS = {
    "op 7": ('{"op":7,"d":null}', None),
    "op 9 true": ('{"op":9,"d":true}', None),
    "close 4000": (None, 4000),
    "close 4008": (None, 4008),
}


@pytest.mark.parametrize(("frame", "code"), RESUME_TRIGGERS.values(), ids=RESUME_TRIGGERS)
async def test_reconnect_requests_and_resumable_closes_resume(
    frame: str | None, code: int | None
) -> None:
    async with _running() as (sb, shard, user_id):
        session = shard.session_id
        if frame is not None:
            assert sb.main_gateway.send_raw(user_id, frame)
        else:
            assert sb.main_gateway.drop(user_id, code)
        await sb.wait_for(lambda: sb.counters.get("gateway_resumed") == 1)
        assert sb.counters["gateway_identified"] == 1
        assert sb.counters.get("gateway_closed_1000", 0) == 0  # the shard kept its session
        await _joined(sb, shard)
        assert shard.session_id == session


# What makes the shard identify anew: op 9 "not resumable", the session-ending close
# codes of Discord's table, and a resume the gateway refuses (expired session).
NEW_SESSION_TRIGGERS = {
    "op 9 false": ('{"op":9,"d":false}', None, False),
    **{f"close {c}": (None, c, False) for c in (4001, 4003, 4005, 4007, 4009)},
    "expired session": (None, 4000, True),
}


@pytest.mark.parametrize(
    ("frame", "code", "expire"), NEW_SESSION_TRIGGERS.values(), ids=NEW_SESSION_TRIGGERS
)
async def test_invalid_sessions_and_session_ending_closes_identify_anew(
    frame: str | None, code: int | None, expire: bool
) -> None:
    async with _running() as (sb, shard, user_id):
        first = shard.session_id
        if expire:
            assert sb.main_gateway.expire_sessions() == 1
        if frame is not None:
            assert sb.main_gateway.send_raw(user_id, frame)
        else:
            assert sb.main_gateway.drop(user_id, code)
        await sb.wait_for(lambda: sb.counters.get("gateway_identified") == 2)
        await _joined(sb, shard)  # online again, under the new session
        assert shard.session_id not in (None, first)
        # Only a refused resume costs an attempt at resuming first.
        assert shard.stats.resumes == (1 if expire else 0)
        assert shard.stats.invalid_sessions == (0 if code in (4001, 4003, 4005, 4007, 4009) else 1)


async def test_a_zombie_connection_is_closed_and_resumed() -> None:
    # A short Hello interval instead of sleeping: the withheld ACK shows at the next beat.
    async with _running(gateway_heartbeat_interval=100.0) as (sb, shard, _):
        await sb.wait_for(lambda: sb.counters.get("gateway_heartbeats", 0) >= 1)
        sb.main_gateway.withhold_heartbeat_acks(1)
        await sb.wait_for(lambda: sb.counters.get("gateway_resumed", 0) >= 1)
        assert shard.stats.zombies >= 1
        assert sb.counters["gateway_acks_withheld"] == 1
        assert sb.counters["gateway_identified"] == 1
        await _joined(sb, shard)


@pytest.mark.parametrize("code", sorted(FATAL_CLOSE_CODES))
async def test_fatal_close_codes_end_the_shard_with_a_clear_error(code: int) -> None:
    async with _running() as (sb, shard, user_id):
        assert sb.main_gateway.drop(user_id, code)
        with pytest.raises(GatewayClosed) as ended:
            await shard.wait_closed()
        assert ended.value.code == code
        assert "main gateway closed" in str(ended.value)
        assert shard.error is ended.value and not shard.is_online
        with pytest.raises(UsageError):
            await shard.update_voice_state(sb.guild_id, sb.channel_id)
        assert sb.counters["gateway_identified"] == 1  # no retry


async def test_malformed_frames_from_the_gateway_are_survived() -> None:
    async with _running() as (sb, shard, user_id):
        for frame in MALFORMED:
            assert sb.main_gateway.send_raw(user_id, frame)
        assert sb.main_gateway.send_raw(user_id, '{"op": 42, "d": null}')
        # Frames arrive in order: once op 4 is answered, all of the above were handled.
        await _joined(sb, shard)
        assert shard.stats.malformed_frames == len(MALFORMED)
        assert shard.stats.unknown_opcodes == 1
        assert shard.stats.connections == 1  # never dropped
    # ... and close() (on leaving _running) re-raised nothing.


class RecordingBackoff(Backoff):
    def __init__(self) -> None:
        super().__init__(base=0.01, cap=0.05, rng=random.Random(0))
        self.delays: list[float] = []

    def next_delay(self) -> float:
        delay = super().next_delay()
        self.delays.append(delay)
        return delay


async def test_backoff_only_after_a_failed_attempt_and_reset_by_success() -> None:
    backoff = RecordingBackoff()
    async with _running(backoff) as (sb, shard, user_id):
        # A drop after a good connection: back at once, no delay drawn.
        assert sb.main_gateway.drop(user_id)
        await sb.wait_for(lambda: sb.counters.get("gateway_resumed") == 1)
        assert backoff.delays == []
        # A refused resume is a failed attempt: one delay, within the first bound; the
        # Identify that follows succeeds and resets the count.
        sb.main_gateway.expire_sessions()
        assert sb.main_gateway.drop(user_id)
        await sb.wait_for(lambda: sb.counters.get("gateway_identified") == 2)
        await _joined(sb, shard)
        assert len(backoff.delays) == 1 and 0.0 <= backoff.delays[0] <= backoff.base
        assert backoff.attempts == 0
