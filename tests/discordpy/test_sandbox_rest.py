"""The sandbox's start-up REST routes and compressed gateway, and the CLI line that points a bot."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import ssl
import sys
import zlib
from typing import Any

import aiohttp
import discord
import pytest
import websockets
import yarl
from discord.gateway import DiscordWebSocket

from rxvoice.discordpy import RxVoiceClient
from rxvoice.testing.sandbox import Sandbox
from tests.integration.helpers import Recorder


async def test_rest_routes_answer_like_discord(sandbox: Sandbox) -> None:
    token = {"Authorization": f"Bot {sandbox.bot_token}"}
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=sandbox.ca_file))
    async with aiohttp.ClientSession(connector=connector) as http:

        async def get(route: str, **options: Any) -> tuple[int, Any]:
            async with http.request(
                options.pop("method", "GET"), sandbox.api_url + route, **options
            ) as response:
                assert response.headers["Content-Type"] == "application/json"
                return response.status, await response.json()

        status, me = await get("/users/@me", headers=token)
        assert status == 200 and me["id"] == sandbox.bot_user_id and me["bot"] is True
        # Tokens are shaped like Discord's: the user id in base64, then two parts.
        prefix, *rest = sandbox.bot_token.split(".")
        assert base64.urlsafe_b64decode(prefix + "==").decode() == sandbox.bot_user_id
        assert len(rest) == 2
        status, app = await get("/oauth2/applications/@me", headers=token)
        assert status == 200 and app["id"] == sandbox.bot_user_id
        assert app["owner"]["id"] == sandbox.bot_user_id
        origin = sandbox.gateway_url.split("/?")[0]
        assert await get("/gateway", headers=token) == (200, {"url": origin})
        status, bot = await get("/gateway/bot", headers=token)
        assert (status, bot["url"], bot["shards"]) == (200, origin, 1)
        assert bot["session_start_limit"]["remaining"] > 0

        unauthorized = (401, {"message": "401: Unauthorized", "code": 0})
        assert await get("/users/@me") == unauthorized
        assert await get("/users/@me", headers={"Authorization": "Bot wrong"}) == unauthorized
        assert await get("/users/@me", headers={"Authorization": sandbox.bot_token}) == unauthorized
        not_found = (404, {"message": "404: Not Found", "code": 0})
        assert await get("/channels/1/messages", headers=token) == not_found
        assert await get("/users/@me", headers=token, method="DELETE") == (
            405,
            {"message": "405: Method Not Allowed", "code": 0},
        )
    counters = sandbox.counters
    assert counters["rest_requests"] == 9
    assert (counters["rest_unauthorized"], counters["rest_not_found"]) == (3, 1)


async def test_gateway_speaks_zlib_stream(sandbox: Sandbox) -> None:
    speaker = await sandbox.add_speaker(talk=False)
    url = sandbox.gateway_url + "&compress=zlib-stream"
    inflate = zlib.decompressobj()
    async with websockets.connect(url, ssl=sandbox.client_ssl()) as ws:

        async def recv() -> dict[str, Any]:
            frame = await asyncio.wait_for(ws.recv(), 5)
            assert isinstance(frame, bytes) and frame.endswith(b"\x00\x00\xff\xff")
            payload: dict[str, Any] = json.loads(inflate.decompress(frame))
            return payload

        assert (await recv())["op"] == 10
        identify = {"token": sandbox.bot_token, "intents": 1 << 7, "properties": {}}
        await ws.send(json.dumps({"op": 2, "d": {**identify, "shard": [0, 1]}}))
        ready = await recv()
        assert ready["t"] == "READY" and ready["d"]["shard"] == [0, 1]
        guild = (await recv())["d"]
        assert [c["id"] for c in guild["channels"]] == sandbox.channel_ids
        assert all(c["type"] == 2 for c in guild["channels"])
        # Whoever is in voice is listed, and is a member of the guild too.
        assert [v["user_id"] for v in guild["voice_states"]] == [speaker.user_id]
        assert speaker.user_id in {m["user"]["id"] for m in guild["members"]}


def zstd_decompressor() -> Any:
    """A streaming zstd decompressor (Python 3.14+ or zstandard), or None."""
    with contextlib.suppress(ImportError):
        return importlib.import_module("compression.zstd").ZstdDecompressor()
    with contextlib.suppress(ImportError):
        return importlib.import_module("zstandard").ZstdDecompressor().decompressobj()
    return None


async def test_gateway_speaks_zstd_stream_where_python_has_zstd(sandbox: Sandbox) -> None:
    url = sandbox.gateway_url + "&compress=zstd-stream"
    inflate = zstd_decompressor()
    if inflate is None:  # neither Python 3.14 nor zstandard: a clear refusal
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, ssl=sandbox.client_ssl())
        assert refused.value.response.status_code == 400
        assert (
            b"zstd-stream needs Python 3.14 or the zstandard package" in refused.value.response.body
        )
        return
    async with websockets.connect(url, ssl=sandbox.client_ssl()) as ws:
        frame = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(frame, bytes)
        assert json.loads(inflate.decompress(frame))["op"] == 10


async def test_the_cli_line_points_a_stock_discordpy_bot(monkeypatch: pytest.MonkeyPatch) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rxvoice",
        "sandbox",
        "--speakers",
        "1",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        # Exactly the lines of docs/sandbox.md.
        monkeypatch.setattr(discord.http.Route, "BASE", line["api_url"])
        monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(line["gateway_url"]))
        trust = ssl.create_default_context(cafile=line["ca_file"])
        client = discord.Client(
            intents=discord.Intents.default(), connector=aiohttp.TCPConnector(ssl=trust)
        )
        await client.login(line["bot_token"])
        available = asyncio.ensure_future(client.wait_for("guild_available"))
        runner = asyncio.create_task(client.connect())
        try:
            await asyncio.wait_for(available, 10)
            channel = client.get_channel(int(line["channel_id"]))
            vc = await channel.connect(cls=RxVoiceClient.with_options(ssl=trust))
            [speaker] = line["speakers"]
            heard = Recorder(vc.connection.on_audio_frame)
            await heard.wait_for(lambda fs: sum(f.user_id == speaker for f in fs) >= 10)
            await vc.disconnect()
        finally:
            await client.close()
            await runner
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
