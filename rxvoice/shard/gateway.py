"""A small built-in main-gateway shard: identify, heartbeat, voice dispatches.

It does what a voice-only bot needs: Hello → Identify (with the voice-states
intent) → Ready, heartbeats with the last sequence number, op 4 to join or
leave voice, and the voice dispatches as an observable. It reconnects (with a
fresh Identify) when the gateway drops it. It is not a full Discord client:
use an adapter for your library's gateway when you have one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl as ssl_module
from typing import Any

from reactivex import Observable

from rxvoice.errors import ConnectionClosed, MalformedMessage, UsageError
from rxvoice.secret import Secret
from rxvoice.shard.base import VoiceServerUpdate, VoiceStateUpdate, VoiceUpdate
from rxvoice.streams import EventStream
from rxvoice.transport.websocket import WebSocketTransport

__all__ = ["GatewayShard"]

logger = logging.getLogger(__name__)

INTENT_GUILDS = 1 << 0
INTENT_GUILD_VOICE_STATES = 1 << 7

# Close codes after which identifying again cannot help (bad token, bad intents, ...).
_FINAL_CLOSE_CODES = frozenset({4004, 4010, 4011, 4012, 4013, 4014})


class GatewayShard:
    """A minimal Discord main-gateway client for voice.

    Args:
        token: The bot token.
        url: The gateway URL (``wss://gateway.discord.gg/?v=10&encoding=json`` for
            Discord, the sandbox's ``gateway_url`` offline).
        ssl: TLS context for ``wss`` URLs (the sandbox provides one).
        intents: Gateway intents; voice needs ``GUILD_VOICE_STATES``.

    Example:
        >>> shard = GatewayShard(token, url=sandbox.gateway_url, ssl=sandbox.client_ssl())
        >>> await shard.start()   # doctest: +SKIP
    """

    def __init__(
        self,
        token: str | Secret[str],
        *,
        url: str = "wss://gateway.discord.gg/?v=10&encoding=json",
        ssl: ssl_module.SSLContext | None = None,
        intents: int = INTENT_GUILDS | INTENT_GUILD_VOICE_STATES,
    ) -> None:
        self._token = token if isinstance(token, Secret) else Secret(token)
        self.url = url
        self._ssl = ssl
        self.intents = intents
        self._user_id: str | None = None
        self._seq: int | None = None
        self._ws = WebSocketTransport(name="rxvoice-shard")
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._voice_updates: EventStream[VoiceUpdate] = EventStream()

    def __repr__(self) -> str:
        return f"GatewayShard(url={self.url!r}, user_id={self._user_id!r})"

    @property
    def user_id(self) -> str | None:
        """Our user id, from READY."""
        return self._user_id

    @property
    def voice_updates(self) -> Observable[VoiceUpdate]:
        """``VOICE_STATE_UPDATE`` and ``VOICE_SERVER_UPDATE`` dispatches (hot, no replay)."""
        return self._voice_updates

    async def start(self, *, timeout: float = 10.0) -> None:
        """Connect and identify; return once READY arrived.

        Raises:
            rxvoice.errors.ConnectionClosed: If the gateway refused us for good.
            TimeoutError: If READY did not come in time.
        """
        if self._task is not None:
            raise UsageError("shard already started")
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._task = loop.create_task(self._run(), name="rxvoice-shard")
        await asyncio.wait_for(asyncio.shield(self._ready), timeout)

    async def update_voice_state(
        self,
        guild_id: str,
        channel_id: str | None,
        *,
        self_mute: bool = False,
        self_deaf: bool = False,
    ) -> None:
        """Send op 4 (Update Voice State).

        Raises:
            UsageError: If the shard is not connected.
        """
        payload = {
            "op": 4,
            "d": {
                "guild_id": guild_id,
                "channel_id": channel_id,
                "self_mute": self_mute,
                "self_deaf": self_deaf,
            },
        }
        await self._send(payload)

    async def close(self) -> None:
        """Disconnect and stop reconnecting."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._voice_updates.on_completed()

    async def _send(self, payload: dict[str, Any]) -> None:
        if not self._ws.is_open:
            raise UsageError("shard is not connected")
        if not await self._ws.send(json.dumps(payload)):
            raise UsageError("shard connection closed")

    async def _run(self) -> None:
        backoff = 0.5
        try:
            while True:
                code = await self._session()
                if code in _FINAL_CLOSE_CODES:
                    error = ConnectionClosed(code, "the gateway refused this bot")
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_exception(error)
                    logger.error("gateway closed with %s; not reconnecting", code)
                    return
                logger.info("gateway connection closed (%s); reconnecting", code)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        finally:
            self._ws.abort()

    async def _session(self) -> int | None:
        ws = self._ws
        try:
            # READY and GUILD_CREATE can be large: a bigger limit than voice's.
            await ws.connect(self.url, ssl=self._ssl, max_size=1 << 24)
        except OSError as exc:
            logger.warning("gateway connection failed: %s", exc)
            return None
        try:
            async for frame in ws.frames():
                try:
                    await self._handle(json.loads(frame))
                except (ValueError, MalformedMessage, KeyError, TypeError) as exc:
                    logger.warning("malformed gateway message ignored: %s", exc)
                except UsageError:
                    break  # our reply could not be sent: the connection is closing
        finally:
            code = ws.close_code
            ws.abort()  # closed or cancelled: release the socket either way
        return code

    async def _handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        d: Any = message.get("d")
        if message.get("s") is not None:
            self._seq = message["s"]
        if op == 10:
            self._ws.start_heartbeat(float(d["heartbeat_interval"]) / 1000.0, self._beat)
            await self._send(
                {
                    "op": 2,
                    "d": {
                        "token": self._token.reveal(),
                        "intents": self.intents,
                        "properties": {"os": "linux", "browser": "rxvoice", "device": "rxvoice"},
                    },
                }
            )
        elif op == 1:
            await self._send(self._heartbeat())
        elif op in (7, 9):
            # Reconnect / invalid session: start over with a fresh Identify.
            await self._ws.close(4000)
        elif op == 0:
            kind = message.get("t")
            if kind == "READY":
                self._user_id = str(d["user"]["id"])
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
            elif kind == "VOICE_STATE_UPDATE":
                self._voice_updates.on_next(VoiceStateUpdate.parse(d))
            elif kind == "VOICE_SERVER_UPDATE":
                self._voice_updates.on_next(VoiceServerUpdate.parse(d))

    def _heartbeat(self) -> dict[str, Any]:
        return {"op": 1, "d": self._seq}

    def _beat(self) -> str:
        return json.dumps(self._heartbeat())
