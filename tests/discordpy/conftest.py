"""Fixtures: real discord.py (and disnake) clients logged into the sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any

import aiohttp
import discord
import pytest
import yarl
from discord.gateway import DiscordWebSocket

from rxvoice.connection import Connection
from rxvoice.shard import GatewayShard
from rxvoice.testing.sandbox import Sandbox

Login = Callable[..., Awaitable[Any]]
Listen = Callable[..., Awaitable[Connection]]


@pytest.fixture
async def sandbox(request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
    """A sandbox with DAVE and two voice channels; ``@pytest.mark.sandbox(...)`` passes options."""
    marker = request.node.get_closest_marker("sandbox")
    options: dict[str, Any] = {"heartbeat_interval": 1000.0, "transition_timeout": 1.0}
    options["channels"] = 2
    if marker is not None:
        options.update(marker.kwargs)
    async with Sandbox(**options) as sb:
        yield sb


@pytest.fixture
async def login(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Login]:
    """``await login(library=discord)``: a stock client of ``library``, logged in, guild cached.

    It is pointed at the sandbox exactly as docs/sandbox.md says.
    """
    started: list[tuple[Any, asyncio.Task[None]]] = []

    async def make(library: ModuleType = discord) -> Any:
        monkeypatch.setattr(library.http.Route, "BASE", sandbox.api_url)
        if library is discord:
            # discord.Client connects to a hard-coded gateway URL (not /gateway).
            monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(sandbox.gateway_url))
        connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=sandbox.ca_file))
        client = library.Client(intents=library.Intents.default(), connector=connector)
        await client.login(sandbox.bot_token)
        # The guild is cached when GUILD_CREATE is parsed; on_ready comes
        # guild_ready_timeout (2 s) later, so wait for the guild instead.
        available = asyncio.ensure_future(client.wait_for("guild_available"))
        runner = asyncio.create_task(client.connect())
        started.append((client, runner))
        await asyncio.wait_for(available, 10)
        return client

    yield make
    for client, runner in started:
        await client.close()
        with contextlib.suppress(Exception):
            await runner


@pytest.fixture
async def listen(sandbox: Sandbox) -> AsyncIterator[Listen]:
    """``await listen(channel_id=None)``: another bot (rxvoice's own shard) in a call."""
    made: list[tuple[Connection, GatewayShard]] = []

    async def make(channel_id: str | None = None) -> Connection:
        shard = GatewayShard(
            sandbox.add_bot()[0], url=sandbox.gateway_url, ssl=sandbox.client_ssl()
        )
        await shard.start()
        conn = Connection(
            guild_id=sandbox.guild_id,
            channel_id=channel_id or sandbox.channel_id,
            shard=shard,
            ssl=sandbox.client_ssl(),
        )
        made.append((conn, shard))
        await conn.connect()
        return conn

    yield make
    for conn, shard in made:
        with contextlib.suppress(Exception):
            await conn.close()
        await shard.close()
