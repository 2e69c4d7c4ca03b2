"""rxvoice.connect against the sandbox: async with, plain await, moves, gateway drops, errors."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

import rxvoice
from rxvoice.errors import GatewayClosed, UsageError
from rxvoice.events import ConnectionState
from rxvoice.standalone import StandaloneConnection
from rxvoice.testing.sandbox import Sandbox
from tests.integration.helpers import Recorder, count, hear_everything, payloads_of, until_in_group

OPTIONS = {"heartbeat_interval": 1000.0, "transition_timeout": 1.0}


async def test_async_with_hears_two_speakers_then_leaves_and_closes_everything() -> None:
    async with Sandbox(**OPTIONS) as sb:
        alice = await sb.add_speaker(talk=False)
        bob = await sb.add_speaker(talk=False)
        joining = rxvoice.connect(
            token=sb.bot_token,
            guild_id=sb.guild_id,
            channel_id=int(sb.channel_id),  # ids as ints are fine
            gateway_url=sb.gateway_url,
            ca_file=sb.ca_file,
        )
        async with joining as conn:
            assert isinstance(conn, StandaloneConnection)
            assert conn.current_state is ConnectionState.READY
            assert conn.user_id == sb.bot_user_id
            frames = Recorder(conn.on_audio_frame)
            for speaker in (alice, bob):
                await until_in_group(conn, speaker.user_id)
            await asyncio.gather(alice.talk(10), bob.talk(10))
            for speaker in (alice, bob):
                expected = await hear_everything(frames, speaker)
                assert payloads_of(frames.items, speaker.user_id) == expected
            shard = conn.gateway_shard
        # Left the channel (op 4), closed the voice connection and the gateway session.
        assert conn.current_state is ConnectionState.CLOSED
        await sb.wait_for(lambda: sb.bot_user_id not in sb.roster())
        assert sb.main_gateway.voice_channel(sb.bot_user_id) is None
        assert not shard.is_online
        await sb.wait_for(lambda: sb.counters.get("gateway_sessions_ended") == 1)  # 1000
        with pytest.raises(UsageError):
            await joining  # once only


async def test_awaited_without_joining_sees_the_handshake_and_survives_gateway_drops() -> None:
    async with Sandbox(**OPTIONS) as sb:
        speaker = await sb.add_speaker(talk=False)
        conn = await rxvoice.connect(
            token=sb.bot_token,
            guild_id=sb.guild_id,
            channel_id=sb.channel_id,
            join=False,
            gateway_url=sb.gateway_url,
            ssl=sb.client_ssl(),
            self_deaf=False,  # Connection options pass through
        )
        assert conn.current_state is ConnectionState.IDLE
        # Subscribed before the handshake: the users already in the call are seen.
        readies = Recorder(conn.on_ready)
        joined = Recorder(conn.on_client_connect)
        await conn.connect()
        assert [e.user_id for e in joined.items] == [speaker.user_id]
        assert len(readies.items) == 1

        # Discord moves the bot while its gateway connection is down: the move's
        # dispatches are replayed after the resume and the voice connection follows.
        assert conn.user_id is not None
        assert sb.main_gateway.drop(conn.user_id)
        assert sb.move(conn.user_id)
        await readies.wait_for(count(2))
        assert sb.counters["gateway_resumed"] == 1 and sb.counters["gateway_identified"] == 1
        frames = Recorder(conn.on_audio_frame)
        await until_in_group(conn, speaker.user_id)
        await speaker.talk(5)
        expected = await hear_everything(frames, speaker)  # wait first, then look
        assert payloads_of(frames.items, speaker.user_id) == expected

        shard = conn.gateway_shard
        await conn.disconnect()
        assert not shard.is_online
        await shard.wait_closed()  # closed by us: no error
        await sb.wait_for(lambda: conn.user_id not in sb.roster())


async def test_a_refused_token_and_bad_arguments() -> None:
    async with Sandbox(dave=False) as sb:
        common = {"guild_id": sb.guild_id, "channel_id": sb.channel_id}
        with pytest.raises(GatewayClosed) as refused:
            await rxvoice.connect(
                token="x9q-secret", gateway_url=sb.gateway_url, ssl=sb.client_ssl(), **common
            )
        assert refused.value.code == 4004
        assert "x9q-secret" not in str(refused.value)
        bad: list[dict[str, object]] = [
            {"token": "", **common},
            {"token": "t", "guild_id": "guild", "channel_id": sb.channel_id},
            {"token": "t", "guild_id": sb.guild_id, "channel_id": True},
            {"token": "t", "ssl": sb.client_ssl(), "ca_file": sb.ca_file, **common},
            {"token": "t", "shard": object(), **common},
            # A URL that can never connect: refused now, not retried until a timeout.
            {"token": "t", **common, "gateway_url": "gateway.discord.gg"},
            {"token": "t", **common, "gateway_url": "https://127.0.0.1:1/"},
            # A misspelt Connection option: it once failed only after the shard was up,
            # and left that shard running.
            {"token": "t", **common, "jitter_latncy": 0.1},
        ]
        for kwargs in bad:
            with pytest.raises(UsageError):
                rxvoice.connect(**kwargs)  # type: ignore[arg-type]


def test_connect_is_exported_lazily() -> None:
    from rxvoice import standalone

    assert rxvoice.connect is standalone.connect
    assert "connect" in rxvoice.__all__


def _example() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "examples" / "standalone.py"
    spec = importlib.util.spec_from_file_location("standalone_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_runs_against_its_own_sandbox(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    example = _example()
    assert await example.main(["--sandbox", "--seconds", "0.2"]) == 0
    out = capsys.readouterr().out
    assert out.count("in the call: ") == 2 and "connected as " in out
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    with pytest.raises(SystemExit) as usage:
        await example.main(["--guild", "1", "--channel", "2"])
    assert usage.value.code == 2
