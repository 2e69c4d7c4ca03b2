"""A small built-in main-gateway shard: identify, resume, heartbeat, voice dispatches.

It does what a voice-only bot needs, the way Discord's gateway documentation
asks a client to behave:

- Hello → Identify (intents ``GUILDS | GUILD_VOICE_STATES``) → READY, which
  gives the session id and the ``resume_gateway_url``;
- heartbeats with the last sequence number (the first after a random part of
  the interval); a heartbeat that is not acknowledged before the next one
  marks a *zombie* connection, which is closed and resumed;
- after a drop, op 7 Reconnect, op 9 Invalid Session with ``d: true`` or a
  resumable close code: reconnect to ``resume_gateway_url`` and send op 6
  Resume (``session_id``, ``seq``), so the gateway replays the missed
  dispatches and no new Identify is spent; op 9 with ``d: false`` and the
  close codes that end a session (4001, 4003, 4005, 4007, 4009): identify anew;
- failed attempts in a row wait a jittered, doubling, bounded delay
  (:class:`~rxvoice.shard.backoff.Backoff`), reset once a connection succeeds;
- the close codes after which reconnecting cannot help (4004, 4010-4014) end
  the shard with :class:`~rxvoice.errors.GatewayClosed`;
- any frame, however malformed, is counted (:attr:`GatewayShard.stats`) and
  logged, never fatal.

It is not a full Discord client: use an adapter for your library's gateway
when you have one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import ssl as ssl_module
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from reactivex import Observable

from rxvoice.errors import GatewayClosed, MalformedMessage, UsageError
from rxvoice.protocol.gateway import check_snowflake
from rxvoice.secret import Secret
from rxvoice.shard.backoff import Backoff
from rxvoice.shard.base import VoiceServerUpdate, VoiceStateUpdate, VoiceUpdate
from rxvoice.streams import EventStream
from rxvoice.transport.websocket import WebSocketTransport

__all__ = [
    "DISCORD_GATEWAY_URL",
    "FATAL_CLOSE_CODES",
    "INTENT_GUILDS",
    "INTENT_GUILD_VOICE_STATES",
    "GatewayShard",
    "ShardStats",
    "check_gateway_url",
]

logger = logging.getLogger(__name__)

DISCORD_GATEWAY_URL = "wss://gateway.discord.gg/?v=10&encoding=json"
"""Discord's main gateway (API v10, JSON, no compression)."""

INTENT_GUILDS = 1 << 0
INTENT_GUILD_VOICE_STATES = 1 << 7

FATAL_CLOSE_CODES: dict[int, str] = {
    4004: "authentication failed: the bot token is wrong or was reset",
    4010: "invalid shard",
    4011: "sharding required: the bot is in too many guilds for one shard",
    4012: "invalid API version",
    4013: "invalid intents",
    4014: "disallowed intents: enable them for the bot in the Developer Portal",
}
"""Close codes after which reconnecting cannot help, with what they mean."""

# Close codes that end the session: reconnect, but with a new Identify.
_NEW_SESSION_CLOSE_CODES = frozenset({4001, 4003, 4005, 4007, 4009})

# Any code but 1000/1001 keeps the session resumable on Discord's side.
_RESUMABLE_CLOSE = 4000

# READY and GUILD_CREATE can be large: a bigger limit than voice's.
_MAX_FRAME = 1 << 24


def check_gateway_url(url: str) -> str:
    """Return ``url`` if it can be a main-gateway URL: ``ws://`` or ``wss://``, a host, a port.

    Checked once, up front: a URL that can never connect would otherwise be
    retried with backoff until a timeout that names no cause.

    Raises:
        UsageError: If it cannot be.
    """
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("ws", "wss") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except (ValueError, TypeError, AttributeError):
        valid = False
    if not valid:
        raise UsageError(f"the gateway URL must be ws://HOST[:PORT]/... or wss://..., got {url!r}")
    return url


@dataclass(slots=True)
class ShardStats:
    """What a :class:`GatewayShard` counted, problems it survived included."""

    connections: int = 0
    identifies: int = 0
    resumes: int = 0
    zombies: int = 0
    invalid_sessions: int = 0
    malformed_frames: int = 0
    unknown_opcodes: int = 0


class GatewayShard:
    """A minimal Discord main-gateway client for voice.

    Args:
        token: The bot token.
        url: The gateway URL: :data:`DISCORD_GATEWAY_URL`, or the sandbox's
            ``gateway_url`` offline.
        ssl: TLS context for ``wss`` URLs (the sandbox provides one).
        intents: Gateway intents; voice needs ``GUILD_VOICE_STATES`` (and
            ``GUILDS`` for the guild itself).
        backoff: The delay policy between failed attempts (1 s doubling to
            60 s, jittered, by default).

    Raises:
        UsageError: If ``url`` is not a ``ws://`` or ``wss://`` URL with a host.

    Example:
        >>> shard = GatewayShard(token, url=sandbox.gateway_url, ssl=sandbox.client_ssl())
        >>> await shard.start()   # doctest: +SKIP
    """

    def __init__(
        self,
        token: str | Secret[str],
        *,
        url: str = DISCORD_GATEWAY_URL,
        ssl: ssl_module.SSLContext | None = None,
        intents: int = INTENT_GUILDS | INTENT_GUILD_VOICE_STATES,
        backoff: Backoff | None = None,
    ) -> None:
        self._token = token if isinstance(token, Secret) else Secret(token)
        self.url = check_gateway_url(url)
        self._ssl = ssl
        self.intents = intents
        self.backoff = backoff if backoff is not None else Backoff()
        self.stats = ShardStats()
        self.error: GatewayClosed | None = None
        self._user_id: str | None = None
        # The session: what op 6 Resume needs.
        self._session_id: str | None = None
        self._seq: int | None = None
        self._resume_url: str | None = None
        # The current connection.
        self._ws = WebSocketTransport(name="rxvoice-shard")
        self._acked = True
        self._drop = False  # the frame handler asked to end this connection
        self._succeeded = False  # this connection reached READY or RESUMED
        self._online = asyncio.Event()
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._closed = False
        self._voice_updates: EventStream[VoiceUpdate] = EventStream()

    def __repr__(self) -> str:
        return (
            f"GatewayShard(url={self.url!r}, user_id={self._user_id!r}, "
            f"online={self._online.is_set()})"
        )

    @property
    def user_id(self) -> str | None:
        """Our user id, from READY."""
        return self._user_id

    @property
    def session_id(self) -> str | None:
        """The gateway session being kept (resumed after drops), if any."""
        return self._session_id

    @property
    def is_online(self) -> bool:
        """Whether a connection is up and identified or resumed (op 4 can be sent)."""
        return self._online.is_set()

    @property
    def voice_updates(self) -> Observable[VoiceUpdate]:
        """``VOICE_STATE_UPDATE`` and ``VOICE_SERVER_UPDATE`` dispatches (hot, no replay)."""
        return self._voice_updates

    async def start(self, *, timeout: float = 10.0) -> None:
        """Connect and identify; return once READY arrived.

        Raises:
            GatewayClosed: If the gateway refused the bot for good (4004, 4010-4014).
            TimeoutError: If READY did not come in time (the shard keeps trying
                until :meth:`close`).
            UsageError: If the shard was already started or closed.
        """
        if self._task is not None or self._closed:
            raise UsageError("a GatewayShard starts once")
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
        timeout: float = 10.0,
    ) -> None:
        """Send op 4 (Update Voice State); during a reconnect, first wait for it.

        Raises:
            UsageError: If the shard is not started, is closed or ended, or did
                not come back within ``timeout`` seconds.
        """
        if self._task is None or self._task.done():
            raise UsageError("the shard is not running") from self.error
        if not self._online.is_set():
            try:
                await asyncio.wait_for(self._online.wait(), timeout)
            except TimeoutError:
                raise UsageError("the shard is not connected") from None
        payload = {
            "op": 4,
            "d": {
                "guild_id": guild_id,
                "channel_id": channel_id,
                "self_mute": self_mute,
                "self_deaf": self_deaf,
            },
        }
        if not self._ws.is_open or not await self._ws.send(json.dumps(payload)):
            raise UsageError("the shard connection closed")

    async def wait_closed(self) -> None:
        """Wait until the shard stops: after :meth:`close`, or for good after a fatal close.

        Raises:
            GatewayClosed: If the gateway refused the bot (4004, 4010-4014).
            UsageError: If the shard was never started.
        """
        if self._task is None and not self._closed:
            raise UsageError("the shard was not started")
        await self._stopped.wait()
        if self.error is not None:
            raise self.error

    async def close(self) -> None:
        """End the session (close code 1000: Discord shows the bot offline) and stop."""
        self._closed = True
        self._online.clear()
        task, self._task = self._task, None
        if self._ws.is_open:
            await self._ws.close(1000)
        if task is not None:
            task.cancel()
            # _run handles everything; nothing but the cancellation can come out.
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._ws.abort()  # and its heartbeat, even if no connection was open
        self._stopped.set()
        self._voice_updates.on_completed()

    # -- the connection loop -----------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self._closed:
                code = await self._connection()
                if self._closed:
                    return
                if code in FATAL_CLOSE_CODES:
                    self._fail(GatewayClosed(code, FATAL_CLOSE_CODES[code]))
                    return
                if code in _NEW_SESSION_CLOSE_CODES:
                    self._forget_session()
                delay = 0.0 if self._succeeded else self.backoff.next_delay()
                logger.info(
                    "gateway connection ended (close code %s); %s in %.2f s",
                    code,
                    "resuming" if self._session_id is not None else "identifying",
                    delay,
                )
                await asyncio.sleep(delay)
        except Exception as exc:  # a bug must still leave close() and start() usable
            logger.exception("the gateway shard stopped")
            self._fail(GatewayClosed(None, f"the shard failed: {type(exc).__name__}"))
        finally:
            self._online.clear()
            self._ws.abort()
            self._stopped.set()

    async def _connection(self) -> int | None:
        """Run one WebSocket connection; return the close code it ended with."""
        resume_url = self._resume_url if self._session_id is not None else None
        url = resume_url or self.url
        self._acked, self._drop, self._succeeded = True, False, False
        ws = self._ws
        try:
            await ws.connect(url, ssl=self._ssl, max_size=_MAX_FRAME)
        except OSError as exc:
            logger.warning("gateway connection failed: %s", exc)
            if resume_url is not None:
                self._resume_url = None  # Discord: then resume through the first URL
            return None
        self.stats.connections += 1
        try:
            async for frame in ws.frames():
                if self._drop:
                    continue  # closing: what is still buffered no longer matters
                for reply in self.handle_frame(frame):
                    if not ws.is_open or not await ws.send(reply):
                        break
                if self._drop:
                    # Not 1000/1001: those would end the session we resume.
                    ws.abort(_RESUMABLE_CLOSE)
            return None if self._drop else ws.close_code
        finally:
            self._online.clear()
            ws.abort()  # closed or cancelled: release the socket either way

    # -- frames --------------------------------------------------------------------------

    def handle_frame(self, frame: str | bytes) -> list[str]:
        """Handle one frame from the gateway; return the frames to send in reply.

        Never raises: a frame that cannot be used is counted in
        :attr:`stats` (``malformed_frames``) and logged without its content.
        """
        try:
            message = _decode(frame)
            return self._handle(message)
        except (MalformedMessage, ValueError, TypeError, KeyError, RecursionError) as exc:
            self.stats.malformed_frames += 1
            logger.warning("malformed gateway frame ignored: %s", _describe(exc))
        except Exception as exc:  # never let a frame end the shard
            self.stats.malformed_frames += 1
            logger.warning("gateway frame could not be handled: %s", type(exc).__name__)
        return []

    def _handle(self, message: dict[str, Any]) -> list[str]:
        op = message["op"]
        d: Any = message.get("d")
        if op == 0:
            seq = message.get("s")
            if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0:
                self._seq = seq  # the latest, for heartbeats and Resume
            kind = message.get("t")
            if not isinstance(kind, str):
                raise MalformedMessage("a dispatch needs a t")
            self._dispatch(kind, d)
        elif op == 10:
            return self._hello(d)
        elif op == 11:
            self._acked = True
        elif op == 1:
            return [self._heartbeat()]
        elif op == 7:
            logger.info("gateway asked us to reconnect (op 7)")
            self._drop = True
        elif op == 9:
            self.stats.invalid_sessions += 1
            resumable = d is True
            logger.info("gateway invalidated the session (op 9, resumable=%s)", resumable)
            if not resumable:
                self._forget_session()
            self._succeeded = False  # wait (backoff) before identifying again
            self._drop = True
        else:
            self.stats.unknown_opcodes += 1
            logger.debug("gateway opcode %s ignored", op)
        return []

    def _hello(self, d: Any) -> list[str]:
        interval = d.get("heartbeat_interval") if isinstance(d, dict) else None
        if (
            isinstance(interval, bool)
            or not isinstance(interval, int | float)
            or not math.isfinite(interval)
            or interval <= 0
        ):
            raise MalformedMessage("Hello needs a positive heartbeat_interval")
        seconds = float(interval) / 1000.0
        # Discord: the first heartbeat after interval * jitter, jitter in [0, 1).
        jitter = random.random()  # noqa: S311 - spreading load, not a secret
        self._ws.start_heartbeat(seconds, self._beat, first_delay=seconds * jitter)
        if self._session_id is not None and self._seq is not None:
            self.stats.resumes += 1
            d_resume = {
                "token": self._token.reveal(),
                "session_id": self._session_id,
                "seq": self._seq,
            }
            return [json.dumps({"op": 6, "d": d_resume})]
        self._forget_session()
        self.stats.identifies += 1
        identify = {
            "token": self._token.reveal(),
            "intents": self.intents,
            "properties": {"os": sys.platform, "browser": "rxvoice", "device": "rxvoice"},
        }
        return [json.dumps({"op": 2, "d": identify})]

    def _dispatch(self, kind: str, d: Any) -> None:
        if kind == "READY":
            if not isinstance(d, dict):
                raise MalformedMessage("READY needs an object")
            user = d.get("user")
            user_id = check_snowflake(user.get("id") if isinstance(user, dict) else None, "user")
            session_id = d.get("session_id")
            if not isinstance(session_id, str) or not session_id:
                raise MalformedMessage("READY needs a session_id")
            self._user_id, self._session_id = user_id, session_id
            self._resume_url = self._resume_url_from(d.get("resume_gateway_url"))
            self._online_now()
        elif kind == "RESUMED":
            logger.info("gateway session resumed")
            self._online_now()
        elif kind == "VOICE_STATE_UPDATE":
            self._voice_updates.on_next(VoiceStateUpdate.parse(d))
        elif kind == "VOICE_SERVER_UPDATE":
            self._voice_updates.on_next(VoiceServerUpdate.parse(d))

    def _online_now(self) -> None:
        self._succeeded = True
        self.backoff.reset()
        self._online.set()
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _resume_url_from(self, value: object) -> str | None:
        # Discord gives a bare wss://host; the version and encoding come from our URL.
        if not isinstance(value, str):
            return None
        try:
            given, ours = urlsplit(value), urlsplit(self.url)
        except ValueError:
            return None
        if given.scheme != ours.scheme or not given.netloc:
            return None  # never from wss:// down to ws://, never a relative URL
        return urlunsplit(
            (given.scheme, given.netloc, given.path or "/", given.query or ours.query, "")
        )

    def _forget_session(self) -> None:
        self._session_id = self._seq = self._resume_url = None

    def _fail(self, error: GatewayClosed) -> None:
        logger.error("%s; the shard stops", error)
        self.error = error
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # retrieved: start() may have timed out already

    # -- heartbeats ----------------------------------------------------------------------

    def _heartbeat(self) -> str:
        return json.dumps({"op": 1, "d": self._seq})

    def _beat(self) -> str | None:
        if not self._acked:
            # No ACK since the last heartbeat: a zombie connection. Close it and resume.
            self.stats.zombies += 1
            logger.warning("no heartbeat ACK from the gateway; reconnecting")
            self._online.clear()
            self._ws.abort(_RESUMABLE_CLOSE)
            return None
        self._acked = False
        return self._heartbeat()


def _decode(frame: str | bytes) -> dict[str, Any]:
    """The gateway payload in a frame: a JSON object with an integer ``op``."""
    if isinstance(frame, bytes | bytearray | memoryview):
        # Discord sends binary frames only with compression or ETF, neither asked for.
        try:
            frame = bytes(frame).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedMessage("binary frame is not UTF-8 JSON") from None
    if not isinstance(frame, str):
        raise MalformedMessage("frame is neither text nor bytes")
    try:
        message = json.loads(frame)
    except RecursionError:
        raise MalformedMessage("JSON nested too deeply") from None
    if not isinstance(message, dict):
        raise MalformedMessage("a gateway payload must be a JSON object")
    op = message.get("op")
    if isinstance(op, bool) or not isinstance(op, int):
        raise MalformedMessage("a gateway payload needs an integer op")
    return message


def _describe(exc: BaseException) -> str:
    # Our own messages never hold values; other exceptions' may, so show their type.
    if isinstance(exc, MalformedMessage):
        return str(exc)
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON ({exc.msg})"
    return type(exc).__name__
