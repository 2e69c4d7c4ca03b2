"""Standalone use: one call joins a voice channel through the built-in gateway shard.

:func:`connect` starts a :class:`~rxvoice.shard.GatewayShard` (the bot's own
main-gateway session), builds a :class:`~rxvoice.Connection` on it and joins
the channel. Use it as ``async with`` (leaves and closes everything at the
end) or await it (then :meth:`StandaloneConnection.disconnect` leaves and
closes the shard too).

It is for bots that do nothing but voice. A bot that already runs a Discord
library must not also run this: Discord keeps one voice state per user and
guild, and two gateway sessions would fight over it. Use the library's adapter
instead (``rxvoice.discordpy``).

Example:
    >>> async with rxvoice.connect(token=TOKEN, guild_id=GUILD, channel_id=CHANNEL) as conn:
    ...     conn.on_speaking.subscribe(print)                   # doctest: +SKIP
    ...     await asyncio.sleep(60)
"""

from __future__ import annotations

import inspect
import os
import ssl as ssl_module
from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import Any

from rxvoice.connection import Connection
from rxvoice.errors import UsageError
from rxvoice.events import ConnectionState
from rxvoice.protocol.gateway import snowflake_argument
from rxvoice.secret import Secret
from rxvoice.shard.gateway import (
    DISCORD_GATEWAY_URL,
    INTENT_GUILD_VOICE_STATES,
    INTENT_GUILDS,
    GatewayShard,
    check_gateway_url,
)

__all__ = ["Joining", "StandaloneConnection", "connect"]


class StandaloneConnection(Connection):
    """A :class:`~rxvoice.Connection` that owns its :class:`~rxvoice.shard.GatewayShard`.

    :meth:`close` (and so :meth:`disconnect` and ``async with``) also ends the
    shard's gateway session. Everything else is a plain ``Connection``.
    """

    def __init__(self, *, shard: GatewayShard, **options: Any) -> None:
        super().__init__(shard=shard, **options)
        self.gateway_shard = shard
        self._owned_shard: GatewayShard | None = shard

    async def close(self) -> None:
        """Close the voice connection, then the gateway shard it started with."""
        try:
            await super().close()
        finally:
            shard, self._owned_shard = self._owned_shard, None
            if shard is not None:
                await shard.close()


class Joining:
    """What :func:`connect` returns: await it, or enter it with ``async with``.

    ``await`` gives the :class:`StandaloneConnection`; ``async with`` gives it
    too and, on exit, leaves the channel and closes the connection and the
    shard. Either way it can be used once.
    """

    def __init__(self, open_: Callable[[], Coroutine[Any, Any, StandaloneConnection]]) -> None:
        self._open = open_
        self._used = False
        self._conn: StandaloneConnection | None = None

    def __repr__(self) -> str:
        return f"Joining(connection={self._conn!r})"

    def _start(self) -> Coroutine[Any, Any, StandaloneConnection]:
        if self._used:
            raise UsageError("the result of rxvoice.connect() can be used once")
        self._used = True
        return self._open()

    def __await__(self) -> Generator[Any, None, StandaloneConnection]:
        return self._start().__await__()

    async def __aenter__(self) -> StandaloneConnection:
        self._conn = await self._start()
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await _leave(conn)


def connect(
    *,
    token: str | Secret[str],
    guild_id: str | int,
    channel_id: str | int,
    join: bool = True,
    gateway_url: str = DISCORD_GATEWAY_URL,
    ssl: ssl_module.SSLContext | None = None,
    ca_file: str | os.PathLike[str] | None = None,
    intents: int = INTENT_GUILDS | INTENT_GUILD_VOICE_STATES,
    timeout: float = 30.0,
    **connection_options: Any,
) -> Joining:
    """Join a voice channel with the built-in gateway shard, in one call.

    Starts a :class:`~rxvoice.shard.GatewayShard` and waits for READY, builds a
    :class:`StandaloneConnection` on it and connects it (op 4, then the voice
    handshake, DAVE included).

    To see the handshake itself (``on_ready``, the first DAVE epoch, the users
    already in the call), pass ``join=False``: the connection comes back built
    but not connected; subscribe, then ``await conn.connect()``.

    Args:
        token: The bot token (kept as a :class:`~rxvoice.Secret`).
        guild_id: The guild of the voice channel.
        channel_id: The voice channel.
        join: Connect before returning; ``False`` leaves ``conn.connect()`` to you.
        gateway_url: The main gateway: Discord's, or a local one such as the
            sandbox's ``gateway_url``.
        ssl: TLS context for the gateway and voice WebSockets.
        ca_file: A PEM file of certificates to trust instead (the sandbox's
            ``ca_file``); not with ``ssl``.
        intents: Gateway intents (``GUILDS`` and ``GUILD_VOICE_STATES`` are needed).
        timeout: Seconds allowed for READY, and again for the voice connection.
        **connection_options: Passed to :class:`~rxvoice.Connection`
            (``self_deaf``, ``jitter_latency``, ...).

    Returns:
        A :class:`Joining`: ``conn = await connect(...)`` or
        ``async with connect(...) as conn:``.

    Raises:
        UsageError: Right away, for a bad argument; when awaited, if the
            connection cannot be had.
        rxvoice.errors.GatewayClosed: When awaited, if the gateway refused the
            bot (4004: a wrong token; 4014: intents not enabled).
        rxvoice.errors.ConnectionClosed: When awaited, if the voice server
            refused the connection.
        TimeoutError: When awaited, if READY or the voice connection took longer
            than ``timeout``.
    """
    secret = token if isinstance(token, Secret) else Secret(token)
    if not isinstance(secret.reveal(), str) or not secret.reveal():
        raise UsageError("connect() needs the bot token")
    guild, channel = (
        snowflake_argument(guild_id, "guild_id"),
        snowflake_argument(channel_id, "channel_id"),
    )
    if "shard" in connection_options:
        raise UsageError("connect() starts its own shard; give yours to Connection(shard=...)")
    try:  # a misspelt option: now, not once the shard is up
        inspect.signature(Connection).bind_partial(**connection_options)
    except TypeError as exc:
        raise UsageError(f"connect(): {exc}") from None
    if ssl is not None and ca_file is not None:
        raise UsageError("give ssl or ca_file, not both")
    check_gateway_url(gateway_url)
    context = ssl_module.create_default_context(cafile=os.fspath(ca_file)) if ca_file else ssl

    async def open_() -> StandaloneConnection:
        shard = GatewayShard(secret, url=gateway_url, ssl=context, intents=intents)
        try:
            await shard.start(timeout=timeout)
            conn = StandaloneConnection(
                guild_id=guild, channel_id=channel, shard=shard, ssl=context, **connection_options
            )
        except BaseException:
            await shard.close()
            raise
        if join:
            try:
                await conn.connect(timeout=timeout)
            except BaseException:
                await _leave(conn)
                raise
        return conn

    return Joining(open_)


async def _leave(conn: StandaloneConnection) -> None:
    # Leave the channel only if we asked to join it; close() ends the shard as well.
    if conn.current_state is ConnectionState.IDLE:
        await conn.close()
    else:
        await conn.disconnect()
