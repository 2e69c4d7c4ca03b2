"""Voice credentials: given, or asked of the main gateway; and where the gateway moves us.

Voice credentials are never cached (protocol.md §2): with a shard, every new
session asks for fresh ones. While a connection runs, the shard's voice
dispatches may announce a move (new token or endpoint), a reallocation
(``endpoint: null``, then a new server) or that we left the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from reactivex import abc

from rxvoice.errors import UsageError
from rxvoice.protocol.closecodes import CloseCode
from rxvoice.protocol.session import VoiceServerInfo
from rxvoice.shard.base import VoiceServerUpdate, VoiceStateUpdate, VoiceUpdate

if TYPE_CHECKING:
    from rxvoice.connection import Connection

__all__ = ["Credentials"]


class Credentials:
    """The main-gateway side of one :class:`~rxvoice.Connection`.

    Args:
        conn: The connection whose ``guild_id``, ``channel_id``,
            ``session_id``, ``token`` and ``endpoint`` this keeps up to date.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._given = bool(conn.session_id and conn.token and conn.endpoint)
        # Our own op 4 is waiting for its dispatches: they are not a move.
        self._request: asyncio.Future[VoiceServerInfo] | None = None
        # The next voice server, announced (done) or expected (pending), and
        # how long to wait for it when it is not there yet.
        self._next: asyncio.Future[VoiceServerInfo] | None = None
        self._next_wait = 0.0

    # -- credentials for a new session --------------------------------------------------

    def check(self) -> None:
        """Raise ``UsageError`` if no session can ever get credentials."""
        conn = self._conn
        if self._given or conn.shard is None:
            if not (conn.session_id and conn.token is not None and conn.endpoint):
                raise UsageError("give session_id, token and endpoint, or a shard to request them")
            if conn.user_id is None:
                raise UsageError("user_id is needed when credentials are given directly")

    async def for_new_session(self) -> VoiceServerInfo:
        """The credentials of a new session: the given ones, or fresh ones from the shard."""
        conn = self._conn
        if not self._given and conn.shard is not None:
            return await self.request()
        self.check()
        assert conn.session_id and conn.token is not None and conn.endpoint and conn.user_id
        return VoiceServerInfo(
            guild_id=conn.guild_id,
            channel_id=conn.channel_id,
            user_id=conn.user_id,
            session_id=conn.session_id,
            token=conn.token,
            endpoint=conn.endpoint,
        )

    async def request(self, timeout: float = 10.0) -> VoiceServerInfo:
        """Send op 4 through the shard and wait for both voice dispatches.

        Raises:
            UsageError: Without a shard.
            TimeoutError: If the two voice dispatches did not arrive in time.
        """
        conn = self._conn
        shard = conn.shard
        if shard is None:
            raise UsageError("request_voice needs a shard")
        got: asyncio.Future[VoiceServerInfo] = asyncio.get_running_loop().create_future()
        session_id: str | None = None
        server: VoiceServerUpdate | None = None

        def on_update(update: VoiceUpdate) -> None:
            nonlocal session_id, server
            if got.done():
                return
            if isinstance(update, VoiceStateUpdate):
                if update.user_id == conn.user_id and update.guild_id in (None, conn.guild_id):
                    session_id = update.session_id
            elif update.guild_id == conn.guild_id and update.endpoint is not None:
                server = update
            user_id = conn.user_id
            if session_id is not None and server is not None and user_id is not None:
                assert server.endpoint is not None
                got.set_result(
                    VoiceServerInfo(
                        guild_id=conn.guild_id,
                        channel_id=conn.channel_id,
                        user_id=user_id,
                        session_id=session_id,
                        token=server.token,
                        endpoint=server.endpoint,
                    )
                )

        subscription = shard.voice_updates.subscribe(on_update)
        self._request = got
        try:
            await shard.update_voice_state(
                conn.guild_id, conn.channel_id, self_mute=conn.self_mute, self_deaf=conn.self_deaf
            )
            info = await asyncio.wait_for(got, timeout)
        finally:
            self._request = None
            subscription.dispose()
        self._next = None  # fresh credentials supersede an announced move
        conn.session_id, conn.token, conn.endpoint = info.session_id, info.token, info.endpoint
        conn._user_id = info.user_id
        return info

    # -- moves while connected ----------------------------------------------------------

    def watch(self) -> abc.DisposableBase | None:
        """Follow the shard's voice dispatches while the connection runs (dispose to stop)."""
        shard = self._conn.shard
        self._next = None
        return shard.voice_updates.subscribe(self._on_update) if shard is not None else None

    def expecting(self, code: int | None) -> bool:
        """Whether, after a close with ``code``, new credentials came or may come.

        4014 also ends the old session when Discord moves us; ``endpoint: null``
        means the voice server is being reallocated. Either way the next
        server's credentials may follow from the main gateway.
        """
        if self._next is None and code == CloseCode.DISCONNECTED and self._conn.shard is not None:
            self._expect(self._conn.move_timeout)
        return self._next is not None

    @property
    def arrived(self) -> bool:
        """Whether the next server's credentials are already here."""
        return self._next is not None and self._next.done()

    async def next_server(self) -> VoiceServerInfo | None:
        """Wait (the move or reallocation timeout) for the next server; ``None`` if none came."""
        future = self._next
        if future is None:
            return None
        if not future.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), self._next_wait)
            future = self._next  # a later move may have replaced it
        self._next = None
        return future.result() if future is not None and future.done() else None

    def _expect(self, wait: float) -> asyncio.Future[VoiceServerInfo]:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._next_wait = wait
        return self._next

    def _on_update(self, update: VoiceUpdate) -> None:
        conn = self._conn
        session = conn._session
        if session is None:
            return  # still asking for the first credentials
        if isinstance(update, VoiceStateUpdate):
            if update.user_id != conn.user_id or update.guild_id not in (None, conn.guild_id):
                return
            if update.channel_id is None:
                conn.logger.info("we left the voice channel; closing")
                conn.force_close()
                return
            # Moved to another channel (also the DAVE group): credentials follow.
            conn.channel_id = update.channel_id
            conn.session_id = update.session_id
            return
        if update.guild_id != conn.guild_id or self._request is not None:
            return
        if update.endpoint is None:
            # The voice server is being reallocated: leave it and wait for the next.
            conn.logger.info("voice server endpoint removed; waiting for a new one")
            self._expect(conn.endpoint_timeout)
            conn.web_socket.abort()
            return
        info = session.gateway.info
        if update.token == info.token and update.endpoint == info.endpoint:
            return
        # Moved or reallocated: a new voice session with the new credentials.
        conn.token, conn.endpoint = update.token, update.endpoint
        moved = VoiceServerInfo(
            guild_id=conn.guild_id,
            channel_id=conn.channel_id,
            user_id=info.user_id,
            session_id=conn.session_id or info.session_id,
            token=update.token,
            endpoint=update.endpoint,
        )
        future = self._expect(conn.move_timeout)
        if future.done():  # a second move before the first was used: the latest wins
            future = self._next = asyncio.get_running_loop().create_future()
        future.set_result(moved)
        conn.web_socket.abort()
