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

from rxvoice.testing.sandbox import Sandbox

Login = Callable[..., Awaitable[Any]]


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
