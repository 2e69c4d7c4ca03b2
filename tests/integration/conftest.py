"""Fixtures: a sandbox per test and rxvoice connections joined through its main gateway."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from rxvoice.connection import Connection
from rxvoice.shard import GatewayShard
from rxvoice.testing.sandbox import Sandbox, SandboxOptions

Join = Callable[..., Awaitable[Connection]]


#: Quicker than Discord's timings, so that tests of timeouts do not wait long.
TEST_OPTIONS = SandboxOptions(heartbeat_interval=1000.0, transition_timeout=1.0)


@pytest.fixture
async def sandbox(request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
    """A sandbox with DAVE; ``@pytest.mark.sandbox(...)`` changes :class:`SandboxOptions` fields."""
    marker = request.node.get_closest_marker("sandbox")
    async with Sandbox(TEST_OPTIONS, **(marker.kwargs if marker else {})) as sb:
        yield sb


@pytest.fixture
async def join(sandbox: Sandbox) -> AsyncIterator[Join]:
    """``await join(**connection_options)``: a new bot joins the call, connected.

    The first call uses the sandbox's default bot, later ones new bots.
    """
    made: list[tuple[Connection, GatewayShard]] = []

    async def make(*, connect: bool = True, **options: Any) -> Connection:
        token = sandbox.bot_token if not made else sandbox.add_bot()[0]
        shard = GatewayShard(token, url=sandbox.gateway_url, ssl=sandbox.client_ssl())
        await shard.start()
        conn = Connection(
            guild_id=sandbox.guild_id,
            channel_id=sandbox.channel_id,
            shard=shard,
            ssl=sandbox.client_ssl(),
            **options,
        )
        made.append((conn, shard))
        if connect:
            await conn.connect()
        return conn

    yield make
    for conn, shard in made:
        with contextlib.suppress(Exception):
            await conn.close()
        await shard.close()
