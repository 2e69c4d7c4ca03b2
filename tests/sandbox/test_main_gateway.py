"""The sandbox's main-gateway stub, driven by a raw WebSocket client (protocol.md §2, §7.1)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from rxvoice.protocol import gateway as gw
from rxvoice.testing.sandbox import Sandbox
from rxvoice.testing.sandbox.voice import new_snowflake
from tests.sandbox.rawclient import harness


class Bot:
    """A raw main-gateway client that records every payload."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.payloads: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.user_id = ""
        self.session_id = ""
        self.guild: dict[str, Any] = {}

    @classmethod
    async def connect(cls, sb: Sandbox) -> Bot:
        return cls(await websockets.connect(sb.gateway_url, ssl=sb.client_ssl()))

    async def send(self, op: int, d: Any) -> None:
        await self.ws.send(json.dumps({"op": op, "d": d}))

    async def recv(self) -> dict[str, Any]:
        payload: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
        return payload

    async def dispatch(self, event: str) -> dict[str, Any]:
        """The next dispatch of type ``event`` (others are skipped)."""
        while True:
            payload = await self.recv()
            if payload["op"] == 0 and payload["t"] == event:
                return payload

    async def login(self, token: str) -> None:
        hello = await self.recv()
        assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] > 0
        await self.send(2, {"token": token, "intents": 1 << 7, "properties": {}})
        ready = await self.recv()
        assert (ready["op"], ready["t"], ready["s"]) == (0, "READY", 1)
        self.user_id = ready["d"]["user"]["id"]
        self.session_id = ready["d"]["session_id"]
        self.guild = await self.recv()
        assert (self.guild["t"], self.guild["s"]) == ("GUILD_CREATE", 2)

    async def close_code(self) -> int | None:
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), 5)
        except websockets.ConnectionClosed:
            return self.ws.close_code


async def test_identify_heartbeat_and_errors() -> None:
    async with Sandbox(dave=False) as sb:
        bot = await Bot.connect(sb)
        await bot.login(sb.bot_token)
        assert bot.user_id == sb.bot_user_id
        guild = bot.guild
        assert guild["d"]["id"] == sb.guild_id
        assert [c["id"] for c in guild["d"]["channels"]] == [sb.channel_id]
        await bot.send(1, 2)
        assert await bot.recv() == {"op": 11, "d": None}
        await bot.ws.close()

        bad = await Bot.connect(sb)
        await bad.recv()
        await bad.send(2, {"token": "wrong", "intents": 0, "properties": {}})
        assert await bad.close_code() == 4004
        early = await Bot.connect(sb)
        await early.recv()
        await early.send(4, {"guild_id": sb.guild_id, "channel_id": sb.channel_id})
        assert await early.close_code() == 4003


async def _join(bot: Bot, sb: Sandbox, channel_id: str | None = None) -> tuple[dict, dict]:
    await bot.send(
        4,
        {
            "guild_id": sb.guild_id,
            "channel_id": channel_id or sb.channel_id,
            "self_mute": False,
            "self_deaf": False,
        },
    )
    # §11.1: VOICE_STATE_UPDATE comes first, then VOICE_SERVER_UPDATE.
    state = await bot.recv()
    server = await bot.recv()
    assert (state["t"], server["t"]) == ("VOICE_STATE_UPDATE", "VOICE_SERVER_UPDATE")
    assert server["s"] == state["s"] + 1
    return state["d"], server["d"]


async def test_op4_flow_into_the_voice_gateway() -> None:
    async with harness(dave=False) as h:
        sb = h.sb
        bot = await Bot.connect(sb)
        await bot.login(sb.bot_token)
        state, server = await _join(bot, sb)
        assert state["user_id"] == bot.user_id and state["session_id"] == bot.session_id
        assert (state["guild_id"], state["channel_id"]) == (sb.guild_id, sb.channel_id)
        assert server["guild_id"] == sb.guild_id and server["endpoint"] == sb.voice_endpoint
        assert "://" not in server["endpoint"]
        # The credentials from the dispatches open a voice session.
        voice = h.client(bot.user_id, session_id=state["session_id"], token=server["token"])
        await voice.connect()
        await voice.handshake()
        assert sb.roster() == [bot.user_id]

        # Leaving: op 4 with a null channel.
        await bot.send(4, {"guild_id": sb.guild_id, "channel_id": None})
        left = await bot.dispatch("VOICE_STATE_UPDATE")
        assert left["d"]["channel_id"] is None and left["d"]["user_id"] == bot.user_id
        assert await voice.wait_closed() == 4014
        assert sb.roster() == []
        await bot.ws.close()


async def test_move_endpoint_null_and_server_update() -> None:
    async with harness(dave=False) as h:
        sb = h.sb
        bot = await Bot.connect(sb)
        await bot.login(sb.bot_token)
        state, server = await _join(bot, sb)
        voice = h.client(bot.user_id, session_id=state["session_id"], token=server["token"])
        await voice.connect()
        await voice.handshake()

        # A move: new token; the old voice session ends with 4014 and its token is dead.
        assert sb.move(bot.user_id)
        moved_state = await bot.dispatch("VOICE_STATE_UPDATE")
        moved = await bot.dispatch("VOICE_SERVER_UPDATE")
        assert moved_state["d"]["channel_id"] == sb.channel_id
        assert moved["d"]["token"] != server["token"]
        assert await voice.wait_closed() == 4014
        stale = h.client(bot.user_id, session_id=state["session_id"], token=server["token"])
        await stale.connect()
        await stale.send(stale.identify_message())
        assert await stale.wait_closed() == 4004
        fresh = h.client(bot.user_id, session_id=state["session_id"], token=moved["d"]["token"])
        await fresh.connect()
        await fresh.handshake()

        # Reallocation: endpoint null, then a new server update with a new token.
        assert sb.endpoint_null(bot.user_id)
        null = await bot.dispatch("VOICE_SERVER_UPDATE")
        assert null["d"]["endpoint"] is None
        assert sb.server_update(bot.user_id)
        update = await bot.dispatch("VOICE_SERVER_UPDATE")
        assert update["d"]["endpoint"] == sb.voice_endpoint
        assert update["d"]["token"] not in (server["token"], moved["d"]["token"])
        await bot.ws.close()


async def test_several_bots_and_speaker_voice_states() -> None:
    async with Sandbox() as sb:
        token, user_id = sb.add_bot("second")
        first = await Bot.connect(sb)
        await first.login(sb.bot_token)
        second = await Bot.connect(sb)
        await second.login(token)
        assert second.user_id == user_id != first.user_id
        await _join(first, sb)
        # Other bots see the voice state too.
        seen = await second.dispatch("VOICE_STATE_UPDATE")
        assert seen["d"]["user_id"] == first.user_id
        # Simulated speakers show up as voice states.
        speaker = await sb.add_speaker(talk=False)
        state = await second.dispatch("VOICE_STATE_UPDATE")
        assert (state["d"]["user_id"], state["d"]["channel_id"]) == (speaker.user_id, sb.channel_id)
        await sb.remove_speaker(speaker)
        gone = await second.dispatch("VOICE_STATE_UPDATE")
        assert (gone["d"]["user_id"], gone["d"]["channel_id"]) == (speaker.user_id, None)
        await first.ws.close()
        await second.ws.close()


async def test_voice_session_replaced_by_a_new_identify() -> None:
    async with harness(dave=False) as h:
        a = await h.joined()
        watcher = await h.joined()
        again = h.client(a.user_id)
        await again.connect()
        await again.handshake()
        assert await a.wait_closed() == 4006
        assert (await watcher.next(gw.ClientDisconnect)).user_id == a.user_id
        assert h.sb.roster() == [watcher.user_id, a.user_id]


async def test_moving_to_a_second_channel() -> None:
    async with harness(dave=False) as h:
        sb = h.sb
        bot = await Bot.connect(sb)
        await bot.login(sb.bot_token)
        watcher = await Bot.connect(sb)
        token, _ = sb.add_bot("watcher")
        await watcher.login(token)
        first, second = sb.channel_id, new_snowflake()
        state, server = await _join(bot, sb)
        await watcher.dispatch("VOICE_STATE_UPDATE")
        voice = h.client(bot.user_id, session_id=state["session_id"], token=server["token"])
        await voice.connect()
        await voice.handshake()
        assert sb.roster(first) == [bot.user_id]

        # op 4 to another channel: dispatches for the new channel, a new token that joins
        # the new call; the session in the old call ends with 4014.
        moved_state, moved_server = await _join(bot, sb, second)
        assert (moved_state["channel_id"], moved_state["user_id"]) == (second, bot.user_id)
        assert moved_state["session_id"] == bot.session_id
        assert moved_server["endpoint"] == sb.voice_endpoint
        assert moved_server["token"] != server["token"]
        seen = await watcher.dispatch("VOICE_STATE_UPDATE")
        assert (seen["d"]["user_id"], seen["d"]["channel_id"]) == (bot.user_id, second)
        assert await voice.wait_closed() == 4014
        assert sb.roster(first) == []
        there = h.client(
            bot.user_id,
            session_id=moved_state["session_id"],
            token=moved_server["token"],
            channel_id=second,
        )
        await there.connect()
        await there.handshake()
        assert sb.roster(second) == [bot.user_id] and sb.roster(first) == []
        # The first channel's token no longer joins the call the bot left.
        stale_first = h.client(bot.user_id, session_id=bot.session_id, token=server["token"])
        await stale_first.connect()
        await stale_first.send(stale_first.identify_message())
        assert await stale_first.wait_closed() == 4004

        # Discord moves the bot back (sb.move): the same pair of dispatches for that channel.
        assert sb.move(bot.user_id, first)
        back_state = await bot.dispatch("VOICE_STATE_UPDATE")
        back_server = await bot.dispatch("VOICE_SERVER_UPDATE")
        assert back_server["s"] == back_state["s"] + 1
        assert (back_state["d"]["channel_id"], back_state["d"]["user_id"]) == (first, bot.user_id)
        assert back_server["d"]["endpoint"] == sb.voice_endpoint
        assert back_server["d"]["token"] not in (server["token"], moved_server["token"])
        seen = await watcher.dispatch("VOICE_STATE_UPDATE")
        assert (seen["d"]["user_id"], seen["d"]["channel_id"]) == (bot.user_id, first)
        assert await there.wait_closed() == 4014
        back = h.client(bot.user_id, session_id=bot.session_id, token=back_server["d"]["token"])
        await back.connect()
        await back.handshake()
        assert sb.roster(first) == [bot.user_id] and sb.roster(second) == []
        # sb.move revoked the second channel's token.
        stale = h.client(
            bot.user_id, session_id=bot.session_id, token=moved_server["token"], channel_id=second
        )
        await stale.connect()
        await stale.send(stale.identify_message())
        assert await stale.wait_closed() == 4004
        await bot.ws.close()
        await watcher.ws.close()
