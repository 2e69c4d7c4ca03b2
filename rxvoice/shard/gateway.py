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
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from rxvoice.errors import ConnectionClosed as RxConnectionClosed
from rxvoice.errors import MalformedMessage, UsageError
from rxvoice.protocol.session import MIN_HEARTBEAT_INTERVAL
from rxvoice.secret import Secret
from rxvoice.shard.base import VoiceServerUpdate, VoiceStateUpdate, VoiceUpdate
from rxvoice.streams import EventStream
from rxvoice.transport.websocket import FRAMES_LOGGER

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
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
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
        ws = self._ws
        if ws is None:
            raise UsageError("shard is not connected")
        try:
            await ws.send(json.dumps(payload))
        except ConnectionClosed as exc:
            raise UsageError("shard connection closed") from exc

    async def _run(self) -> None:
        backoff = 0.5
        try:
            while True:
                code = await self._session()
                if code in _FINAL_CLOSE_CODES:
                    error = RxConnectionClosed(code, "the gateway refused this bot")
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_exception(error)
                    logger.error("gateway closed with %s; not reconnecting", code)
                    return
                logger.info("gateway connection closed (%s); reconnecting", code)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        finally:
            self._stop_heartbeat()

    async def _session(self) -> int | None:
        kwargs: dict[str, Any] = {
            "max_size": 1 << 24,
            "ping_interval": None,
            "logger": FRAMES_LOGGER,
        }
        if self.url.startswith("wss://"):
            kwargs["ssl"] = self._ssl or ssl_module.create_default_context()
        try:
            ws = await connect(self.url, **kwargs)
        except OSError as exc:
            logger.warning("gateway connection failed: %s", exc)
            return None
        self._ws = ws
        try:
            async for frame in ws:
                try:
                    await self._handle(json.loads(frame))
                except (ValueError, MalformedMessage, KeyError, TypeError) as exc:
                    logger.warning("malformed gateway message ignored: %s", exc)
                except UsageError:
                    break  # our reply could not be sent: the connection is closing
        except ConnectionClosed:
            pass
        finally:
            self._stop_heartbeat()
            self._ws = None
            ws.transport.abort()  # closed or cancelled: release the socket either way
        received = ws.protocol.close_rcvd
        return received.code if received is not None else None

    async def _handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        d: Any = message.get("d")
        if message.get("s") is not None:
            self._seq = message["s"]
        if op == 10:
            interval = max(float(d["heartbeat_interval"]) / 1000.0, MIN_HEARTBEAT_INTERVAL)
            self._start_heartbeat(interval)
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
            await self._send({"op": 1, "d": self._seq})
        elif op in (7, 9) and self._ws is not None:
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

    def _start_heartbeat(self, interval: float) -> None:
        self._stop_heartbeat()
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat(interval))

    def _stop_heartbeat(self) -> None:
        task, self._heartbeat = self._heartbeat, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _beat(self, interval: float) -> None:
        while self._ws is not None:
            with contextlib.suppress(ConnectionClosed, UsageError):
                await self._send({"op": 1, "d": self._seq})
            await asyncio.sleep(interval)
