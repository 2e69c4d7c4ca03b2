"""The sandbox's main-gateway stub: Discord gateway v10 (JSON), just enough for voice.

It speaks the part of the gateway that a voice bot needs (protocol.md §2, §7.1):

- op 10 Hello, op 2 Identify (the bot token is checked; 4004 otherwise), the
  ``READY`` dispatch (``user.id``, ``session_id``, ``resume_gateway_url``, ``shard``
  when identified as one) and a ``GUILD_CREATE`` for the sandbox guild (its voice
  channels, roles, the bot as member, everyone's voice states: enough for
  discord.py's and disnake's caches), op 1 Heartbeat → op 11 ACK;
- sessions that outlive their connection: a drop, or a client close with any
  code but 1000/1001, keeps the session (dispatches are buffered); op 6 Resume
  with its ``session_id`` and ``seq`` replays what was missed and ends with
  ``RESUMED``; an unknown session gets op 9 ``d: false``; a ``seq`` the buffer
  cannot cover gets 4007;
- transport compression as bot libraries ask for it: ``compress=zlib-stream``,
  and ``zstd-stream`` where the sandbox's Python has zstd (3.14+ or ``zstandard``);
- op 4 Update Voice State → ``VOICE_STATE_UPDATE`` then ``VOICE_SERVER_UPDATE``
  (a fresh voice token, ``endpoint`` = ``host:port`` without a scheme);
  ``channel_id: null`` → ``VOICE_STATE_UPDATE`` with a null channel and the
  voice session ends;
- triggers for what Discord does on its own: a move (new token), a null
  endpoint, a fresh server update, a kick;
- other users' voice states (the simulated speakers) as ``VOICE_STATE_UPDATE``;
- knobs for clients' tests: drop a bot's connection (:meth:`MainGateway.drop`),
  withhold heartbeat ACKs, send any raw frame (op 7, op 9, garbage).

Dispatches carry ``s`` (a per-session sequence number) and ``t``.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime
import importlib
import json
import logging
import secrets
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from rxvoice.testing.sandbox.links import Link, WebSocketLink
from rxvoice.testing.sandbox.voice import Participant, VoiceServer, new_snowflake

__all__ = ["Bot", "MainGateway", "check_gateway_request"]

logger = logging.getLogger(__name__)

# Gateway close codes (Discord "Gateway Close Event Codes").
_UNKNOWN_OPCODE = 4001
_DECODE_ERROR = 4002
_NOT_AUTHENTICATED = 4003
_AUTHENTICATION_FAILED = 4004
_ALREADY_AUTHENTICATED = 4005
_INVALID_SEQ = 4007

# Closes after which the session can be resumed (Discord's table); other codes end it.
_RESUMABLE_CLOSES = frozenset({4000, _DECODE_ERROR, 4008})
# A client closing with these ends its session (the bot goes offline).
_SESSION_ENDING_CLOSES = frozenset({1000, 1001})

# Dispatches kept per session for op 6 Resume.
_REPLAY_LIMIT = 1000

# Client ops accepted and ignored: presence update, request guild members.
_IGNORED_OPS = frozenset({3, 8})

# VIEW_CHANNEL | CONNECT | SPEAK | USE_VAD, so libraries that check permissions let bots join.
_EVERYONE_PERMISSIONS = str((1 << 10) | (1 << 20) | (1 << 21) | (1 << 25))


@dataclass(frozen=True, slots=True)
class Bot:
    """A bot account the stub accepts.

    Attributes:
        user_id: The bot's user id.
        token: The bot token (not shown in the repr).
        name: The bot's user name.
    """

    user_id: str
    token: str = field(repr=False)
    name: str


@dataclass(eq=False, slots=True)
class _GatewayConn:
    link: Link
    bot: Bot | None = None
    session_id: str = ""
    seq: int = 0
    closing: bool = False
    # (seq, frame) of the latest dispatches, for op 6 Resume.
    sent: collections.deque[tuple[int, str]] = field(
        default_factory=lambda: collections.deque(maxlen=_REPLAY_LIMIT)
    )
    # Transport compression (compress=zlib-stream or zstd-stream): one stream per connection.
    compress: Callable[[bytes], bytes] | None = None


class MainGateway:
    """The main-gateway stub.

    Args:
        voice: The voice gateway (voice tokens and sessions live there).
        voice_endpoint: ``host:port`` of the voice gateway, as sent in
            ``VOICE_SERVER_UPDATE``.
        gateway_url: The gateway's URL; ``resume_gateway_url`` is the same
            server, path ``/resume`` without a query, as Discord gives a bare URL.
        heartbeat_interval: Sent in Hello, in milliseconds.
        counters: Shared event counters.
        on_change: Called after every state change.
        channel_ids: The guild's voice channels in ``GUILD_CREATE``; the voice
            server's default channel when empty.
    """

    def __init__(
        self,
        *,
        voice: VoiceServer,
        voice_endpoint: str,
        gateway_url: str,
        heartbeat_interval: float,
        counters: collections.Counter[str],
        on_change: Callable[[], None],
        channel_ids: Sequence[str] = (),
    ) -> None:
        self._voice = voice
        self.channel_ids = tuple(channel_ids) or (voice.default_channel_id,)
        self.voice_endpoint = voice_endpoint
        self.gateway_url = gateway_url
        parts = urlsplit(gateway_url)
        self.resume_gateway_url = f"{parts.scheme}://{parts.netloc}/resume"
        self.heartbeat_interval = heartbeat_interval
        self._counters = counters
        self._on_change = on_change
        self.bots: dict[str, Bot] = {}  # by token
        self._conns: dict[str, _GatewayConn] = {}  # latest identified connection per bot id
        # Sessions that can be resumed, attached to a connection or not.
        self._sessions: dict[str, _GatewayConn] = {}
        self._withheld_acks = 0
        self._voice_channel: dict[str, str] = {}  # the gateway's idea of each bot's channel
        self._created = datetime.datetime.now(datetime.UTC).isoformat()

    def __repr__(self) -> str:
        return f"MainGateway(bots={len(self.bots)}, connected={len(self._conns)})"

    def add_bot(self, name: str | None = None) -> Bot:
        """Create a bot account (a new token and user id)."""
        user_id = new_snowflake()
        # Shaped like Discord's: base64 of the user id, a timestamp part, an HMAC
        # part (some libraries, e.g. hikari, read the user id from the token).
        prefix = base64.urlsafe_b64encode(user_id.encode()).decode().rstrip("=")
        token = f"{prefix}.{secrets.token_urlsafe(4)}.{secrets.token_urlsafe(27)}"
        bot = Bot(user_id=user_id, token=token, name=name or f"bot-{user_id}")
        self.bots[bot.token] = bot
        return bot

    def is_bot(self, user_id: str) -> bool:
        """Whether ``user_id`` is one of the stub's bots."""
        return any(bot.user_id == user_id for bot in self.bots.values())

    def voice_channel(self, user_id: str) -> str | None:
        """The voice channel the gateway last put ``user_id`` in, if any."""
        return self._voice_channel.get(user_id)

    # -- sending ----------------------------------------------------------------------------

    def _send(self, conn: _GatewayConn, payload: dict[str, Any]) -> None:
        if not conn.closing:
            self._send_text(conn, json.dumps(payload, separators=(",", ":")))

    def _send_text(self, conn: _GatewayConn, text: str) -> None:
        # Each connection compresses with its own stream (a resumed session's replay too).
        conn.link.send(text if conn.compress is None else conn.compress(text.encode()))

    def _dispatch(self, conn: _GatewayConn, event: str, data: object) -> None:
        # A session without a connection still numbers and keeps its dispatches.
        conn.seq += 1
        frame = json.dumps({"op": 0, "t": event, "s": conn.seq, "d": data}, separators=(",", ":"))
        conn.sent.append((conn.seq, frame))
        if not conn.closing:
            self._send_text(conn, frame)

    def _close(self, conn: _GatewayConn, code: int | None, reason: str) -> None:
        if not conn.closing:
            self._counters[f"gateway_closed_{code}" if code is not None else "gateway_dropped"] += 1
            conn.link.close(code, reason)
            conn.closing = True
            if code is not None and code not in _RESUMABLE_CLOSES:
                self._end_session(conn)

    def _end_session(self, conn: _GatewayConn) -> None:
        if self._sessions.get(conn.session_id) is conn:
            del self._sessions[conn.session_id]
            self._counters["gateway_sessions_ended"] += 1
        if conn.bot is not None and self._conns.get(conn.bot.user_id) is conn:
            del self._conns[conn.bot.user_id]

    def user_object(self, user_id: str, name: str, *, bot: bool) -> dict[str, Any]:
        """A Discord user object (also what the REST API returns for ``/users/@me``)."""
        return {
            "id": user_id,
            "username": name,
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "bot": bot,
            "flags": 0,
        }

    def me_object(self, bot: Bot) -> dict[str, Any]:
        """The bot's own user object, as READY and ``GET /users/@me`` carry it."""
        user = self.user_object(bot.user_id, bot.name, bot=True)
        return {**user, "verified": True, "mfa_enabled": False, "locale": "en-US"}

    def _voice_state(
        self, user_id: str, channel_id: str | None, session_id: str, *, bot: bool
    ) -> dict[str, Any]:
        name = next((b.name for b in self.bots.values() if b.user_id == user_id), user_id)
        return {
            "guild_id": self._voice.guild_id,
            "channel_id": channel_id,
            "user_id": user_id,
            "member": {
                "user": self.user_object(user_id, name, bot=bot),
                "roles": [],
                "joined_at": self._created,
                "deaf": False,
                "mute": False,
                "flags": 0,
            },
            "session_id": session_id,
            "deaf": False,
            "mute": False,
            "self_deaf": False,
            "self_mute": False,
            "self_video": False,
            "self_stream": False,
            "suppress": False,
            "request_to_speak_timestamp": None,
        }

    def _broadcast_voice_state(self, state: dict[str, Any]) -> None:
        for conn in list(self._conns.values()):
            self._dispatch(conn, "VOICE_STATE_UPDATE", state)

    # -- serving ----------------------------------------------------------------------------

    async def serve(self, ws: ServerConnection) -> None:
        """Run one gateway connection (the ``websockets`` handler)."""
        link = WebSocketLink(ws)
        conn = _GatewayConn(link)
        if ws.request is not None and urlsplit(ws.request.path).path == "/resume":
            self._counters["gateway_resume_url_connections"] += 1
        if ws.request is not None:
            conn.compress = _stream_compressor(_compression(ws.request))
        self._send(conn, {"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval}})
        try:
            async for frame in ws:
                self.receive(conn, frame)
        except ConnectionClosed:
            pass
        finally:
            conn.closing = True
            received = ws.protocol.close_rcvd
            if received is not None and received.code in _SESSION_ENDING_CLOSES:
                self._end_session(conn)  # otherwise the session waits for op 6
            await link.finish()
            self._on_change()

    def receive(self, conn: _GatewayConn, frame: str | bytes) -> None:
        """Handle one frame from a bot. Never raises."""
        if conn.closing:
            return
        try:
            message = json.loads(frame)
            if not isinstance(message, dict) or not isinstance(message.get("op"), int):
                raise ValueError("not a gateway payload")
        except (ValueError, RecursionError):
            self._counters["gateway_malformed"] += 1
            logger.warning("undecodable main-gateway frame")
            self._close(conn, _DECODE_ERROR, "Decode error")
            return
        try:
            self._handle(conn, message["op"], message.get("d"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._counters["gateway_malformed"] += 1
            logger.warning("malformed main-gateway op %s: %s", message["op"], type(exc).__name__)
            self._close(conn, _DECODE_ERROR, "Decode error")
        except Exception:
            self._counters["gateway_errors"] += 1
            logger.exception("main gateway failed on op %s", message["op"])
        self._on_change()

    def _handle(self, conn: _GatewayConn, op: int, d: Any) -> None:
        if op == 1:
            self._counters["gateway_heartbeats"] += 1
            if self._withheld_acks > 0:
                self._withheld_acks -= 1
                self._counters["gateway_acks_withheld"] += 1
            else:
                self._send(conn, {"op": 11, "d": None})
        elif op == 2:
            self._identify(conn, d)
        elif op == 6:
            self._resume(conn, d)
        elif conn.bot is None:
            self._close(conn, _NOT_AUTHENTICATED, "Not authenticated")
        elif op == 4:
            self._update_voice_state(conn, d)
        elif op in _IGNORED_OPS:
            pass
        else:
            self._close(conn, _UNKNOWN_OPCODE, "Unknown opcode")

    def _identify(self, conn: _GatewayConn, d: Any) -> None:
        if conn.bot is not None:
            self._close(conn, _ALREADY_AUTHENTICATED, "Already authenticated")
            return
        token = str(d["token"]).removeprefix("Bot ")
        bot = self.bots.get(token)
        if bot is None:
            self._counters["gateway_auth_failures"] += 1
            self._close(conn, _AUTHENTICATION_FAILED, "Authentication failed")
            return
        conn.bot = bot
        conn.session_id = secrets.token_hex(16)
        # Several sessions per bot are allowed (shards); the newest gets the voice dispatches.
        self._conns[bot.user_id] = conn
        self._sessions[conn.session_id] = conn
        self._counters["gateway_identified"] += 1
        guild_id = self._voice.guild_id
        self._dispatch(
            conn,
            "READY",
            {
                "v": 10,
                "user": self.me_object(bot),
                "guilds": [{"id": guild_id, "unavailable": True}],
                "session_id": conn.session_id,
                "resume_gateway_url": self.resume_gateway_url,
                "application": {"id": bot.user_id, "flags": 0},
                "private_channels": [],
                # Echoed when the bot identified as a shard (sharded clients read it).
                **({"shard": d["shard"]} if isinstance(d.get("shard"), list) else {}),
            },
        )
        self._dispatch(conn, "GUILD_CREATE", self._guild(bot))

    def _guild(self, bot: Bot) -> dict[str, Any]:
        guild_id = self._voice.guild_id
        voice_states = []
        for call in self._voice.calls.values():
            for p in call.members.values():
                state = self._voice_state(p.user_id, call.channel_id, p.session_id, bot=False)
                del state["guild_id"]  # voice states inside a guild object omit it
                voice_states.append(state)
        return {
            "id": guild_id,
            "name": "rxvoice sandbox",
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": bot.user_id,
            "application_id": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [
                {
                    "id": guild_id,
                    "name": "@everyone",
                    "permissions": _EVERYONE_PERMISSIONS,
                    "position": 0,
                    "color": 0,
                    "colors": {
                        "primary_color": 0,
                        "secondary_color": None,
                        "tertiary_color": None,
                    },
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
            ],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "description": None,
            "banner": None,
            "vanity_url_code": None,
            "max_members": 500000,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
            "large": False,
            "unavailable": False,
            "member_count": 1 + len(voice_states),
            "joined_at": self._created,
            "channels": [
                {
                    "id": channel_id,
                    "type": 2,  # GUILD_VOICE
                    "guild_id": guild_id,
                    "name": "Sandbox" if position == 0 else f"Sandbox {position + 1}",
                    "position": position,
                    "bitrate": 64000,
                    "user_limit": 0,
                    "rtc_region": None,
                    "permission_overwrites": [],
                    "parent_id": None,
                    "nsfw": False,
                }
                for position, channel_id in enumerate(self.channel_ids)
            ],
            "threads": [],
            "members": [
                {
                    "user": self.user_object(bot.user_id, bot.name, bot=True),
                    "roles": [],
                    "joined_at": self._created,
                    "deaf": False,
                    "mute": False,
                    "flags": 0,
                },
                # Everyone in voice is a member the guild lists too, as Discord does.
                *(state["member"] for state in voice_states),
            ],
            "voice_states": voice_states,
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def _update_voice_state(self, conn: _GatewayConn, d: Any) -> None:
        assert conn.bot is not None
        guild_id = str(d["guild_id"])
        if guild_id != self._voice.guild_id:
            self._counters["gateway_unknown_guild"] += 1
            logger.warning("op 4 for an unknown guild ignored")
            return
        channel = d.get("channel_id")
        user_id = conn.bot.user_id
        if channel is None:
            self.leave(user_id)
            return
        channel_id = str(channel)
        if not (channel_id.isdigit() and int(channel_id) < 1 << 64):
            # Discord ignores op 4 for a channel that cannot exist.
            self._counters["gateway_bad_channel"] += 1
            logger.warning("op 4 with an invalid channel_id ignored")
            return
        previous = self._voice_channel.get(user_id)
        moved = previous is not None and previous != channel_id
        if moved:
            # The old call's tokens must not join it any more, as in move().
            self._voice.revoke_tokens(user_id)
        self._join(conn, channel_id)
        if moved:
            # Moved to another channel: the old call's session is over.
            self._voice.leave(user_id)

    def _join(self, conn: _GatewayConn, channel_id: str, *, endpoint: bool = True) -> None:
        assert conn.bot is not None
        user_id = conn.bot.user_id
        self._voice_channel[user_id] = channel_id
        _, token = self._voice.mint(user_id, channel_id, conn.session_id)
        self._broadcast_voice_state(
            self._voice_state(user_id, channel_id, conn.session_id, bot=True)
        )
        self._dispatch(
            conn,
            "VOICE_SERVER_UPDATE",
            {
                "token": token,
                "guild_id": self._voice.guild_id,
                "endpoint": self.voice_endpoint if endpoint else None,
            },
        )

    # -- resuming ---------------------------------------------------------------------------

    def _resume(self, conn: _GatewayConn, d: Any) -> None:
        if conn.bot is not None:
            self._close(conn, _ALREADY_AUTHENTICATED, "Already authenticated")
            return
        token = str(d["token"]).removeprefix("Bot ")
        seq = d["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise TypeError("seq must be an integer")
        old = self._sessions.get(str(d["session_id"]))
        if old is None or old.bot is None or old.bot.token != token:
            self._counters["gateway_invalid_sessions"] += 1
            self._send(conn, {"op": 9, "d": False})
            return
        missed = [frame for s, frame in old.sent if s > seq]
        if not 0 <= seq <= old.seq or len(missed) < old.seq - seq:
            # A seq from the future, or older than the replay buffer reaches.
            self._close(conn, _INVALID_SEQ, "Invalid seq")
            return
        # The new connection takes the session over; the old one (a zombie, maybe) goes.
        conn.bot, conn.session_id, conn.seq, conn.sent = old.bot, old.session_id, old.seq, old.sent
        self._sessions[conn.session_id] = conn
        if self._conns.get(old.bot.user_id) is old:
            self._conns[old.bot.user_id] = conn
        if not old.closing:
            old.closing = True
            old.link.close(None)
        self._counters["gateway_resumed"] += 1
        self._counters["gateway_replayed"] += len(missed)
        for frame in missed:
            self._send_text(conn, frame)
        self._dispatch(conn, "RESUMED", {})

    # -- triggers (what Discord does by itself) ---------------------------------------------

    def leave(self, user_id: str) -> None:
        """The user leaves voice: its voice session ends (4014) and bots see a null channel."""
        self._voice.leave(user_id)
        self._voice.revoke_tokens(user_id)
        self._voice_channel.pop(user_id, None)
        conn = self._conns.get(user_id)
        if conn is not None:
            self._broadcast_voice_state(self._voice_state(user_id, None, conn.session_id, bot=True))

    def move(self, user_id: str, channel_id: str | None = None) -> bool:
        """Move a bot (new token; maybe a new channel); its old voice session ends with 4014.

        Returns:
            Whether the bot is connected to the gateway and in a voice channel.
        """
        conn = self._conns.get(user_id)
        current = self._voice_channel.get(user_id)
        if conn is None or current is None:
            return False
        self._voice.revoke_tokens(user_id)
        self._join(conn, channel_id or current)
        self._voice.leave(user_id)
        return True

    def server_update(self, user_id: str, *, endpoint: bool = True) -> bool:
        """Send a bot a fresh ``VOICE_SERVER_UPDATE`` (new token), or one with a null endpoint.

        Returns:
            Whether the bot is connected to the gateway and in a voice channel.
        """
        conn = self._conns.get(user_id)
        current = self._voice_channel.get(user_id)
        if conn is None or current is None:
            return False
        if not endpoint:
            self._voice.revoke_tokens(user_id)
            self._dispatch(
                conn,
                "VOICE_SERVER_UPDATE",
                {
                    "token": secrets.token_hex(16),
                    "guild_id": self._voice.guild_id,
                    "endpoint": None,
                },
            )
            return True
        _, token = self._voice.mint(user_id, current, conn.session_id)
        self._dispatch(
            conn,
            "VOICE_SERVER_UPDATE",
            {"token": token, "guild_id": self._voice.guild_id, "endpoint": self.voice_endpoint},
        )
        return True

    def on_voice_state(self, p: Participant, joined: bool) -> None:
        """Tell bots about users that did not join through this gateway (speakers, raw clients)."""
        if self._voice_channel.get(p.user_id) is not None or self.is_bot(p.user_id):
            return
        channel = p.channel_id if joined else None
        self._broadcast_voice_state(self._voice_state(p.user_id, channel, p.session_id, bot=False))

    # -- knobs for testing clients ----------------------------------------------------------

    def drop(self, user_id: str, code: int | None = None) -> bool:
        """Close a bot's gateway connection with ``code``, or drop its TCP connection (``None``).

        A drop and the resumable codes (4000, 4002, 4008) keep its session for
        op 6 Resume; other codes end the session, as on Discord.

        Returns:
            Whether the bot had a connection.
        """
        conn = self._conns.get(user_id)
        if conn is None or conn.closing:
            return False
        self._close(conn, code, "closed by the sandbox")
        self._on_change()
        return True

    def expire_sessions(self) -> int:
        """Forget every session for op 6, as Discord does some minutes after a drop.

        Connections stay up; a resume of a forgotten session gets op 9 ``d: false``.

        Returns:
            How many sessions were forgotten.
        """
        expired = len(self._sessions)
        self._sessions.clear()
        self._counters["gateway_sessions_ended"] += expired
        return expired

    def withhold_heartbeat_acks(self, count: int = 1) -> None:
        """Answer the next ``count`` heartbeats (from any bot) with no op 11 ACK."""
        self._withheld_acks = count

    def send_raw(self, user_id: str, frame: str | bytes) -> bool:
        """Send any frame as is to a bot's gateway connection (op 7, op 9, garbage).

        Returns:
            Whether the bot had a connection.
        """
        conn = self._conns.get(user_id)
        if conn is None or conn.closing:
            return False
        conn.link.send(frame)
        self._counters["gateway_raw_frames"] += 1
        return True


def _compression(request: Request) -> str | None:
    return parse_qs(urlsplit(request.path).query).get("compress", [None])[0]


def _stream_compressor(kind: str | None) -> Callable[[bytes], bytes] | None:
    """A compressor for one connection's transport compression; each payload is flushed."""
    if kind == "zlib-stream":
        deflate = zlib.compressobj()
        # A sync flush: every payload ends with 00 00 FF FF, as clients expect.
        return lambda data: deflate.compress(data) + deflate.flush(zlib.Z_SYNC_FLUSH)
    if kind == "zstd-stream":
        return _zstd_compressor()
    return None


def _zstd_compressor() -> Callable[[bytes], bytes] | None:
    """zstd-stream with Python 3.14's ``compression.zstd``, else ``zstandard``; None without."""
    with contextlib.suppress(ImportError):
        zstd = importlib.import_module("compression.zstd")
        compressor = zstd.ZstdCompressor()
        block = zstd.ZstdCompressor.FLUSH_BLOCK
        return lambda data: bytes(compressor.compress(data, mode=block))
    with contextlib.suppress(ImportError):
        zstandard = importlib.import_module("zstandard")
        stream = zstandard.ZstdCompressor().compressobj()
        flush = zstandard.COMPRESSOBJ_FLUSH_BLOCK
        return lambda data: bytes(stream.compress(data) + stream.flush(flush))
    return None


def check_gateway_request(ws: ServerConnection, request: Request) -> Response | None:
    """Refuse encodings and compression the stub does not speak.

    It speaks ``encoding=json``, uncompressed or with transport compression:
    ``compress=zlib-stream``, or ``compress=zstd-stream`` when the sandbox runs
    on Python 3.14+ or has ``zstandard`` (discord.py asks for zstd-stream when
    its side has either).
    """
    query = parse_qs(urlsplit(request.path).query)
    if query.get("encoding", ["json"])[0] != "json":
        return ws.respond(HTTPStatus.BAD_REQUEST, "the sandbox gateway speaks encoding=json only\n")
    kind = _compression(request)
    if kind == "zstd-stream" and _zstd_compressor() is None:
        return ws.respond(
            HTTPStatus.BAD_REQUEST,
            "compress=zstd-stream needs Python 3.14 or the zstandard package in the sandbox\n",
        )
    if kind not in (None, "zlib-stream", "zstd-stream"):
        return ws.respond(
            HTTPStatus.BAD_REQUEST, "the sandbox gateway speaks zlib-stream or zstd-stream only\n"
        )
    return None
