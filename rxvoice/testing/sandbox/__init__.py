"""A local stand-in for the parts of Discord a voice client talks to.

:class:`Sandbox` runs, on loopback and in the current event loop:

- a **main-gateway stub** (gateway v10, JSON, optionally ``zlib-stream``
  compressed, over TLS): Hello, Identify, READY and ``GUILD_CREATE`` (the
  guild, its voice channels and voice states), heartbeats, and op 4 answered
  with ``VOICE_STATE_UPDATE`` and ``VOICE_SERVER_UPDATE``;
- the **REST routes** bot libraries call at start-up (``api_url``, on the main
  gateway's port): the bot user, the application, the gateway URL, so a stock
  discord.py or disnake client logs in (:mod:`rxvoice.testing.sandbox.rest`);
- a **voice gateway v8** (over TLS): the handshake, heartbeats with
  ``seq_ack``, numbered messages and resume with replay, the roster (op 11 /
  13), speaking relay, the error closes, and DAVE through a delivery service
  per call (:mod:`rxvoice.testing.sandbox.dave`);
- a **UDP relay** (an SFU) that answers IP discovery and re-encrypts media for
  each recipient, mixing in ``0xBEDE`` header extensions and RTCP;
- **simulated speakers** that join like real DAVE clients and send real Opus:
  a steady tone each (the default), or speech-like voices taking turns, and,
  when asked to listen, record what they hear from everyone else;
- **fault knobs**: loss, reordering, duplication, jitter, corruption,
  truncation, garbage datagrams, dropped heartbeat ACKs, an invalid commit,
  join/leave churn.

It behaves as protocol.md (§7, §10, §11) says Discord does, so that any
client, not only rxvoice's, can be tested against it.

Example:
    >>> async def main() -> None:                        # doctest: +SKIP
    ...     async with Sandbox(speakers=2) as sb:
    ...         shard = GatewayShard(sb.bot_token, url=sb.gateway_url, ssl=sb.client_ssl())
    ...         await shard.start()
    ...         await shard.update_voice_state(sb.guild_id, sb.channel_id)

From a shell, ``python -m rxvoice sandbox`` prints the same endpoints and
credentials as one JSON line and serves until interrupted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from rxvoice.errors import UsageError
from rxvoice.testing.sandbox.dave import DaveDeliveryService
from rxvoice.testing.sandbox.faults import FaultInjector, Faults
from rxvoice.testing.sandbox.gateway import MainGateway, check_gateway_request
from rxvoice.testing.sandbox.options import WILDCARDS, SandboxOptions
from rxvoice.testing.sandbox.relay import Relay
from rxvoice.testing.sandbox.rest import API_PREFIX, RestApi
from rxvoice.testing.sandbox.speakers import (
    Conversation,
    SentFrame,
    Speaker,
    SpeechVoice,
    speech_pitch,
)
from rxvoice.testing.sandbox.tls import SandboxTls
from rxvoice.testing.sandbox.voice import (
    ParticipantInfo,
    VoiceServer,
    check_voice_request,
    new_snowflake,
)

__all__ = [
    "Faults",
    "ParticipantInfo",
    "Sandbox",
    "SandboxOptions",
    "SentFrame",
    "Speaker",
    "SpeechVoice",
    "VoiceCredentials",
    "speech_pitch",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VoiceCredentials:
    """What a client needs to identify on the voice gateway without the main gateway.

    Unpacks as ``session_id, token, endpoint``.

    Attributes:
        user_id: The user the token is for.
        session_id: The ``session_id`` for Identify.
        token: The voice token (not shown in the repr).
        endpoint: ``host:port`` without a scheme, as ``VOICE_SERVER_UPDATE`` has it.
        channel_id: The call the token joins.
    """

    user_id: str
    session_id: str
    token: str = field(repr=False)
    endpoint: str
    channel_id: str

    def __iter__(self) -> Iterator[str]:
        return iter((self.session_id, self.token, self.endpoint))


class Sandbox:
    """A local Discord for voice clients; use it as an async context manager.

    Args:
        options: How to set it up (see :class:`SandboxOptions`); the defaults
            when omitted.
        **changes: :class:`SandboxOptions` fields to change, e.g.
            ``Sandbox(speakers=2, dave=False)``.

    Raises:
        InvalidArgument: An option is out of range (see :class:`SandboxOptions`).
    """

    def __init__(self, options: SandboxOptions | None = None, /, **changes: Any) -> None:
        options = SandboxOptions() if options is None else options
        self.options = replace(options, **changes) if changes else options
        self._conversation: Conversation | None = None
        self._conversation_task: asyncio.Task[None] | None = None
        self._started = False
        self._injector = FaultInjector(self.options.faults)
        self.guild_id = self.options.guild_id or new_snowflake()
        self.channel_id = self.options.channel_id or new_snowflake()
        self.channel_ids = [
            self.channel_id,
            *(new_snowflake() for _ in range(self.options.channels - 1)),
        ]
        self._counters: collections.Counter[str] = collections.Counter()
        self._waiters: list[asyncio.Future[None]] = []
        self._speakers: dict[str, Speaker] = {}
        self._retired: list[Speaker] = []  # replaced by a new session of the same user
        self._speaker_tasks: dict[str, asyncio.Task[None]] = {}
        self._speaker_count = 0
        self._tls: SandboxTls | None = None
        self._servers: list[Server] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._relay: Relay | None = None
        self._voice: VoiceServer | None = None
        self._gateway: MainGateway | None = None
        self._rest: RestApi | None = None
        self._bot_token = ""
        self.bot_user_id = ""
        self.gateway_url = ""
        self.api_url = ""
        self.voice_endpoint = ""

    def __repr__(self) -> str:
        return f"Sandbox(gateway_url={self.gateway_url!r}, voice_endpoint={self.voice_endpoint!r})"

    # -- life cycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind the sockets, start the servers and the initial speakers."""
        if self._voice is not None:
            raise UsageError("the sandbox is already started")
        loop = asyncio.get_running_loop()
        host = self.options.host
        advertised = "127.0.0.1" if host in WILDCARDS else host
        self._tls = SandboxTls([advertised])
        try:
            await self._start(loop, advertised)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, loop: asyncio.AbstractEventLoop, advertised: str) -> None:
        assert self._tls is not None
        server_ssl = self._tls.server_context()
        options = self.options
        voice_port = options.port + 1 if options.port else 0
        voice = self._voice = VoiceServer(
            options,
            guild_id=self.guild_id,
            default_channel_id=self.channel_id,
            media_ip=advertised,
            clock=loop,
            injector=self._injector,
            counters=self._counters,
            on_change=self._changed,
            on_voice_state=self._voice_state,
        )
        self._udp, self._relay = await loop.create_datagram_endpoint(
            lambda: Relay(
                voice,
                self._injector,
                self._counters,
                extensions=options.rtp_extensions,
                rtcp_interval=options.rtcp_interval,
                on_packet=self._changed,
            ),
            local_addr=(options.host, voice_port),
        )
        voice.media_port = self._udp.get_extra_info("sockname")[1]
        # asyncio reads one datagram per loop iteration: with dozens of speakers a
        # busy moment would overflow the default buffer and lose, say, an IP
        # discovery request (and with it a join).
        with contextlib.suppress(OSError):
            self._udp.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20
            )
        common: dict[str, Any] = {
            "ssl": server_ssl,
            "compression": None,
            "ping_interval": None,
            "max_size": 1 << 22,
        }
        voice_ws = await serve(
            voice.serve,
            options.host,
            voice_port,
            process_request=check_voice_request,
            **common,
        )
        self._servers.append(voice_ws)
        self.voice_endpoint = f"{advertised}:{_bound_port(voice_ws)}"

        gateway_ws = await serve(
            self._serve_gateway,
            options.host,
            options.port,
            process_request=self._gateway_request,
            **common,
        )
        self._servers.append(gateway_ws)
        origin = f"{advertised}:{_bound_port(gateway_ws)}"
        self.gateway_url = f"wss://{origin}/?v=10&encoding=json"
        self.api_url = f"https://{origin}/api/v10"
        self._gateway = MainGateway(
            voice=voice,
            voice_endpoint=self.voice_endpoint,
            gateway_url=self.gateway_url,
            heartbeat_interval=options.gateway_heartbeat_interval,
            counters=self._counters,
            on_change=self._changed,
            channel_ids=self.channel_ids,
        )
        self._rest = RestApi(
            gateway=self._gateway,
            gateway_base_url=f"wss://{origin}",
            counters=self._counters,
            on_change=self._changed,
        )
        bot = self._gateway.add_bot("sandbox-bot")
        self._bot_token, self.bot_user_id = bot.token, bot.user_id
        logger.info("sandbox up: gateway %s, voice %s", self.gateway_url, self.voice_endpoint)
        await self.add_speakers(options.speakers)
        self._started = True  # speakers added from now on are newcomers
        self._start_conversation()

    async def _serve_gateway(self, ws: Any) -> None:
        assert self._gateway is not None
        await self._gateway.serve(ws)

    def _gateway_request(self, ws: ServerConnection, request: Request) -> Response | None:
        # One port, as Discord's one host: REST under /api/, the gateway elsewhere.
        if request.path.startswith(API_PREFIX):
            if self._rest is None:  # a request raced start-up
                return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "starting\n")
            return self._rest.respond(ws, request)
        return check_gateway_request(ws, request)

    async def stop(self) -> None:
        """Stop everything and delete the temporary certificate files. Idempotent."""
        if self._conversation_task is not None:
            self._conversation_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._conversation_task
            self._conversation_task = None
        for user_id in list(self._speakers):
            await self._drop_speaker(user_id, leave=False)
        for retired in self._retired:
            await retired.aclose()
        self._retired.clear()
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._voice is not None:
            self._voice.shutdown()
        if self._tls is not None:
            self._tls.cleanup()
        for waiter in self._waiters:
            waiter.cancel()
        self._waiters.clear()

    # -- endpoints and credentials ----------------------------------------------------------

    @property
    def _server(self) -> VoiceServer:
        if self._voice is None:
            raise UsageError("the sandbox is not started")
        return self._voice

    @property
    def _main(self) -> MainGateway:
        if self._gateway is None:
            raise UsageError("the sandbox is not started")
        return self._gateway

    @property
    def main_gateway(self) -> MainGateway:
        """The main-gateway stub, for its knobs (``drop``, ``send_raw``, ...)."""
        return self._main

    @property
    def bot_token(self) -> str:
        """The default bot's token for the main gateway."""
        return self._bot_token

    @property
    def voice_token(self) -> str:
        """A voice token accepted for any user id and session id (in the default call)."""
        return self._server.universal_token

    @property
    def voice_url(self) -> str:
        """The voice gateway URL, ``wss://host:port/?v=8``."""
        return f"wss://{self.voice_endpoint}/?v=8"

    @property
    def media_address(self) -> tuple[str, int]:
        """The relay's UDP address (what Ready advertises)."""
        return self._server.media_ip, self._server.media_port

    @property
    def ca_file(self) -> str:
        """Path of the PEM certificate to trust (e.g. ``NODE_EXTRA_CA_CERTS``)."""
        if self._tls is None:
            raise UsageError("the sandbox is not started")
        return str(self._tls.ca_file)

    def client_ssl(self) -> ssl.SSLContext:
        """A TLS client context that trusts the sandbox's certificate."""
        if self._tls is None:
            raise UsageError("the sandbox is not started")
        return self._tls.client_context()

    def add_bot(self, name: str | None = None) -> tuple[str, str]:
        """Create another bot account for the main gateway.

        Returns:
            ``(token, user_id)``.
        """
        bot = self._main.add_bot(name)
        return bot.token, bot.user_id

    def voice_credentials(self, user_id: str, channel_id: str | None = None) -> VoiceCredentials:
        """Mint voice credentials for ``user_id``, as op 4 on the main gateway would.

        Args:
            user_id: The user (a snowflake string).
            channel_id: The call; the sandbox's channel by default.
        """
        channel = channel_id or self.channel_id
        session_id, token = self._server.mint(user_id, channel)
        return VoiceCredentials(user_id, session_id, token, self.voice_endpoint, channel)

    # -- speakers ---------------------------------------------------------------------------

    async def add_speaker(
        self,
        frequency: float | None = None,
        *,
        talk: bool = True,
        speech: bool | None = None,
        dave: bool | None = None,
        listen: bool | None = None,
        channel_id: str | None = None,
        user_id: str | None = None,
        timeout: float = 10.0,
    ) -> Speaker:
        """Add a simulated speaker; returns once it has its session description (op 4).

        Args:
            frequency: Its tone in Hz; distinct per speaker by default (300, 450, ...).
                With a speech voice, its pitch (:func:`speech_pitch` of its index by default).
            talk: Run the default script: talk 1 s, pause, repeat (without
                pauses with ``continuous_speech``); with a
                speech voice, take turns in the sandbox's conversation. ``False``
                leaves it to the caller: ``await speaker.talk(n)`` or
                ``say(seconds)``, ``pause()``, ``leave()``.
            speech: Give it a speech voice; follows ``voices`` by default.
            dave: Whether it offers DAVE; follows the sandbox by default.
            listen: Whether it receives, decrypts and records the others' media
                (``speaker.heard``); follows :attr:`SandboxOptions.listen` by default.
            channel_id: The call; the sandbox's channel by default.
            user_id: Reuse a user id: a speaker already using it is replaced by a
                new session (new SSRC and keys), as when a client reconnects.
            timeout: Seconds to wait for the join.
        """
        index = self._speaker_count
        self._speaker_count += 1
        previous = self._speakers.pop(user_id, None) if user_id is not None else None
        if previous is not None:
            task = self._speaker_tasks.pop(previous.user_id, None)
            if task is not None:
                task.cancel()
            self._retired.append(previous)  # the server closes its session (4006)
        if speech if speech is not None else self.options.voices == "speech":
            pitch = frequency if frequency is not None else speech_pitch(index)
            voice: SpeechVoice | None = SpeechVoice(pitch, seed=index)
        else:
            pitch = frequency if frequency is not None else 300.0 + 150.0 * index
            voice = None
        speaker = Speaker(
            self._server,
            user_id=user_id or new_snowflake(),
            channel_id=channel_id or self.channel_id,
            frequency=pitch,
            dave=self.options.dave if dave is None else dave,
            on_change=self._changed,
            voice=voice,
            listen=self.options.listen if listen is None else listen,
        )
        self._speakers[speaker.user_id] = speaker
        try:
            await speaker.join(timeout)
        except BaseException:
            await self._drop_speaker(speaker.user_id)
            raise
        if talk and voice is not None:
            self._converse(speaker)
        elif talk:
            pause = None if self.options.continuous_speech else 0.5
            script = speaker.run(pause_seconds=pause)
            self._speaker_tasks[speaker.user_id] = asyncio.get_running_loop().create_task(
                script, name=f"speaker-{speaker.user_id}-script"
            )
        return speaker

    def _converse(self, speaker: Speaker) -> None:
        if self._conversation is None:
            self._conversation = Conversation(seed=len(self._speakers))
        self._conversation.add(speaker, soon=self._started)
        self._start_conversation()

    def _start_conversation(self) -> None:
        # Once the initial speakers are all in: the first turns go round in join order.
        if self._conversation is not None and self._started and self._conversation_task is None:
            self._conversation_task = asyncio.get_running_loop().create_task(
                self._conversation.run(), name="sandbox-conversation"
            )

    async def add_speakers(self, count: int, *, talk: bool = True) -> list[Speaker]:
        """Add ``count`` speakers (see :meth:`add_speaker`) that join the DAVE group together.

        Proposals are held until all have joined, so they enter the group in one
        commit rather than one epoch per speaker, each committed by every member
        (99 speakers take seconds instead of minutes).
        """
        self._server.hold_dave(self.channel_id)
        try:
            return [await self.add_speaker(talk=talk) for _ in range(count)]
        finally:
            self._server.release_dave(self.channel_id)

    @property
    def speakers(self) -> list[Speaker]:
        """The simulated speakers still in a call, in join order."""
        return [s for s in self._speakers.values() if not s.closed]

    async def remove_speaker(self, speaker: Speaker | str) -> None:
        """Make a simulated speaker leave the call."""
        user_id = speaker if isinstance(speaker, str) else speaker.user_id
        await self._drop_speaker(user_id)

    async def _drop_speaker(self, user_id: str, *, leave: bool = True) -> None:
        task = self._speaker_tasks.pop(user_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        speaker = self._speakers.pop(user_id, None)
        if speaker is not None:
            await (speaker.leave() if leave else speaker.aclose())

    async def churn(self, cycles: int = 5) -> None:
        """Fault knob: a speaker joins and leaves at once, ``cycles`` times."""
        for _ in range(cycles):
            speaker = await self.add_speaker(talk=False)
            await self.remove_speaker(speaker)
            self._counters["churn_cycles"] += 1

    # -- control ----------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """The current fault knobs."""
        return self._injector.faults

    def set_faults(self, faults: Faults | None = None, **changes: Any) -> Faults:
        """Change the fault knobs: a new :class:`Faults`, or fields to change.

        Example:
            >>> sb.set_faults(loss=0.05, seed=7)  # doctest: +SKIP
        """
        base = faults if faults is not None else self._injector.faults
        new = replace(base, **changes)
        self._injector.configure(new)
        return new

    def force_close(self, user_id: str, code: int | None) -> bool:
        """Close a user's voice WebSocket with ``code``, or drop its TCP connection (``None``).

        Resumable codes (below 4000, 4013, 4015, ``None``) keep the session for
        op 7; others (4006, 4009, 4014, 4017, 4021, 4022, ...) end it.

        Returns:
            Whether the user had a connection.
        """
        return self._server.force_close(user_id, code)

    def send_raw(self, user_id: str, frame: str | bytes) -> bool:
        """Send any frame, as is, to a user's voice WebSocket.

        For malformed or unexpected messages, to see that a client survives them.

        Returns:
            Whether the user had a connection.
        """
        return self._server.send_raw(user_id, frame)

    def send_udp(self, user_id: str, datagram: bytes) -> bool:
        """Send any datagram, as is, to a user's media address from the relay's socket.

        For hostile-network tests (junk, forgeries, replays): it comes from the
        address the client's socket is connected to, as from an attacker who
        spoofs the SFU's address.

        Returns:
            Whether the user has a media address.
        """
        p = self._server.participant(user_id)
        if p is None or p.udp_addr is None or self._udp is None:
            return False
        self._udp.sendto(datagram, p.udp_addr)
        return True

    def leave(self, user_id: str) -> None:
        """The user leaves voice (kick or main-gateway leave): its session ends with 4014.

        A bot connected to the main gateway also gets ``VOICE_STATE_UPDATE``
        with a null channel.
        """
        self._main.leave(user_id)

    def move(self, user_id: str, channel_id: str | None = None) -> bool:
        """Discord moves a bot (same or another channel): new voice token, old session 4014.

        Returns:
            Whether the bot is on the main gateway and in voice.
        """
        return self._main.move(user_id, channel_id)

    def endpoint_null(self, user_id: str) -> bool:
        """Send a bot ``VOICE_SERVER_UPDATE`` with ``endpoint: null`` (server reallocation).

        Its old voice tokens stop working; :meth:`server_update` sends a new one.

        Returns:
            Whether the bot is on the main gateway and in voice.
        """
        return self._main.server_update(user_id, endpoint=False)

    def server_update(self, user_id: str) -> bool:
        """Send a bot a fresh ``VOICE_SERVER_UPDATE`` (a new token, the endpoint).

        Returns:
            Whether the bot is on the main gateway and in voice.
        """
        return self._main.server_update(user_id)

    def tap_relay(self, callback: Callable[[str, int, int], None] | None) -> None:
        """Call ``callback(user_id, ssrc, sequence)`` after each RTP packet relayed to a client.

        For timing delivery: the relay sends at once (unless a fault knob delays
        the packet), so ``time.monotonic()`` in the callback is the send time.
        Simulated speakers receive media only when they listen. ``None`` removes
        the callback.
        """
        if self._relay is None:
            raise UsageError("the sandbox is not started")
        self._relay.on_relayed = callback

    def inject_invalid_commit(self, user_id: str) -> bool:
        """Fault knob: corrupt the next DAVE commit or welcome sent to ``user_id``.

        A correct client answers with op 31 and a new key package.

        Returns:
            Whether the user is in a DAVE call.
        """
        return self._server.inject_invalid_commit(user_id)

    # -- inspection -------------------------------------------------------------------------

    def participants(self, channel_id: str | None = None) -> list[ParticipantInfo]:
        """Snapshots of the users in a call (the sandbox's channel by default)."""
        call = self._server.calls.get(channel_id or self.channel_id)
        return [] if call is None else [p.info() for p in call.members.values()]

    def roster(self, channel_id: str | None = None) -> list[str]:
        """User ids in a call, in join order."""
        return [p.user_id for p in self.participants(channel_id)]

    def dave(self, channel_id: str | None = None) -> DaveDeliveryService | None:
        """The DAVE delivery service of a call (epoch, members, leaves, stats), if any."""
        call = self._server.calls.get(channel_id or self.channel_id)
        return None if call is None else call.dave

    @property
    def counters(self) -> dict[str, int]:
        """Event counts: malformed frames, closes by code, relayed packets, faults, ..."""
        merged = collections.Counter(self._counters)
        merged.update(self._injector.counters)
        return dict(merged)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds; it is re-checked after every state change.

        Raises:
            TimeoutError: It did not hold within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not predicate():
                waiter = loop.create_future()
                self._waiters.append(waiter)
                await waiter

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _voice_state(self, p: Any, joined: bool) -> None:
        if self._gateway is not None:
            self._gateway.on_voice_state(p, joined)


def _bound_port(server: Server) -> int:
    return int(next(iter(server.sockets)).getsockname()[1])
