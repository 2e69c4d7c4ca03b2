"""The sandbox main gateway's sessions, resume and knobs, driven by a raw WebSocket client."""

from __future__ import annotations

import websockets

from rxvoice.testing.sandbox import Sandbox
from tests.sandbox.test_main_gateway import Bot, _join


async def _resume(sb: Sandbox, session_id: str, seq: int, token: str | None = None) -> Bot:
    url = sb.main_gateway.resume_gateway_url + "?v=10&encoding=json"
    bot = Bot(await websockets.connect(url, ssl=sb.client_ssl()))
    assert (await bot.recv())["op"] == 10
    d = {"token": token or sb.bot_token, "session_id": session_id, "seq": seq}
    await bot.send(6, d)
    return bot


async def test_resume_replays_what_was_missed_then_resumed() -> None:
    async with Sandbox(dave=False) as sb:
        bot = await Bot.connect(sb)
        await bot.login(sb.bot_token)  # READY s=1, GUILD_CREATE s=2
        # Discord gives a bare URL; the client adds its version and encoding.
        assert sb.main_gateway.resume_gateway_url.endswith("/resume")
        await _join(bot, sb)  # s=3, 4
        await bot.ws.close(4000)  # any code but 1000/1001 keeps the session
        assert sb.server_update(bot.user_id)  # s=5, while the bot is away
        again = await _resume(sb, bot.session_id, 4)
        missed = await again.recv()
        assert (missed["t"], missed["s"]) == ("VOICE_SERVER_UPDATE", 5)
        resumed = await again.recv()
        assert (resumed["op"], resumed["t"], resumed["s"]) == (0, "RESUMED", 6)
        counters = sb.counters
        assert counters["gateway_resumed"] == 1 and counters["gateway_replayed"] == 1
        assert counters["gateway_resume_url_connections"] == 1
        assert counters["gateway_identified"] == 1  # no new session
        # The session goes on, on the new connection.
        assert sb.server_update(bot.user_id)
        live = await again.recv()
        assert (live["t"], live["s"]) == ("VOICE_SERVER_UPDATE", 7)
        await again.send(1, 7)
        assert await again.recv() == {"op": 11, "d": None}
        await again.ws.close()


async def test_resumes_that_cannot_be_honoured() -> None:
    async with Sandbox(dave=False) as sb:
        bot = await Bot.connect(sb)
        await bot.login(sb.bot_token)
        unknown = await _resume(sb, "no-such-session", 2)
        assert await unknown.recv() == {"op": 9, "d": False}
        wrong_token = await _resume(sb, bot.session_id, 2, token="not-the-token")
        assert await wrong_token.recv() == {"op": 9, "d": False}
        future = await _resume(sb, bot.session_id, 99)
        assert await future.close_code() == 4007
        assert sb.counters["gateway_invalid_sessions"] == 2
        # Closing with 1000 ends the session (the bot goes offline): nothing to resume.
        await bot.ws.close(1000)
        await sb.wait_for(lambda: sb.counters.get("gateway_sessions_ended") == 1)
        gone = await _resume(sb, bot.session_id, 2)
        assert await gone.recv() == {"op": 9, "d": False}
        for ws in (unknown, wrong_token, gone):
            await ws.ws.close()


async def test_a_non_resumable_close_from_the_gateway_ends_the_session() -> None:
    async with Sandbox(dave=False) as sb:
        bot = await Bot.connect(sb)
        await bot.login(sb.bot_token)
        assert sb.main_gateway.drop(bot.user_id, 4009)  # session timed out
        assert await bot.close_code() == 4009
        again = await _resume(sb, bot.session_id, 2)
        assert await again.recv() == {"op": 9, "d": False}
        await again.ws.close()


async def test_knobs_drop_withhold_acks_and_raw_frames() -> None:
    async with Sandbox(dave=False) as sb:
        gateway = sb.main_gateway
        bot = await Bot.connect(sb)
        await bot.login(sb.bot_token)
        gateway.withhold_heartbeat_acks(1)
        await bot.send(1, 2)
        await bot.send(1, 2)
        assert await bot.recv() == {"op": 11, "d": None}  # only the second is ACKed
        assert sb.counters["gateway_acks_withheld"] == 1
        assert sb.counters["gateway_heartbeats"] == 2
        assert gateway.send_raw(bot.user_id, '{"op":7,"d":null}')
        assert await bot.recv() == {"op": 7, "d": None}
        assert gateway.send_raw(bot.user_id, b"\x00raw")
        assert await bot.ws.recv() == b"\x00raw"
        assert gateway.drop(bot.user_id)  # a TCP drop: no close frame
        assert await bot.close_code() == 1006
        assert not gateway.drop(bot.user_id)  # no connection any more
        assert not gateway.send_raw(bot.user_id, "{}")
        # The dropped session is resumable.
        again = await _resume(sb, bot.session_id, 2)
        assert (await again.recv())["t"] == "RESUMED"
        await again.ws.close()
