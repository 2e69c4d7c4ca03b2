"""A Connection's voice session driven without sockets: fake transports, frames fed by hand.

The :class:`~rxvoice._voice.session.Session` handles the voice gateway's frames;
here it runs with a :class:`FakeWebSocket` that records what would be sent and a
:class:`FakeUdp` whose IP discovery answers at once (or never), so tests and
fuzzers can feed any sequence of server messages and look at the state after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rxvoice._voice.runner import Run
from rxvoice._voice.session import Session
from rxvoice.connection import Connection
from rxvoice.protocol import gateway as gw
from rxvoice.protocol.ipdiscovery import IpDiscoveryResponse
from rxvoice.protocol.session import VoiceServerInfo
from rxvoice.secret import Secret

USER_ID = "1001"
CHANNEL_ID = "2002"
GUILD_ID = "3003"
KEY = bytes(range(32))


class FakeWebSocket:
    """Stands in for :class:`~rxvoice.transport.websocket.WebSocketTransport`."""

    def __init__(self) -> None:
        self.is_open = True
        self.sent: list[gw.GatewayMessage] = []
        self.aborts = 0
        self.heartbeats: list[float] = []
        self.heartbeat_task: asyncio.Task[None] | None = None

    async def send(self, frame: str | bytes) -> bool:
        self.sent.append(gw.parse(frame, from_server=False).message)
        return True

    def start_heartbeat(
        self, interval: float, beat: Callable[[], Any], *, first_delay: float | None = None
    ) -> None:
        self.heartbeats.append(interval)

    def stop_heartbeat(self) -> None:
        pass

    def abort(self, code: int | None = None) -> None:
        self.aborts += 1

    def sent_of(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.sent if isinstance(m, kind)]


class FakeUdp:
    """Stands in for :class:`~rxvoice.transport.udp.UdpTransport`.

    Args:
        answer: Whether IP discovery answers; ``False``: it never does.
    """

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.is_open = False
        self.discovered: list[int] = []
        self.sent: list[bytes] = []
        self.keepalive: float | None = None
        self.hanging = 0  # discoveries waiting forever
        self._parked: asyncio.Future[None] | None = None

    def parked(self) -> asyncio.Future[None]:
        """A future that resolves when the next discovery starts waiting forever."""
        self._parked = asyncio.get_running_loop().create_future()
        return self._parked

    async def open(self, host: str, port: int) -> None:
        self.is_open = True

    async def discover(self, ssrc: int) -> IpDiscoveryResponse:
        self.discovered.append(ssrc)
        if not self.answer:
            self.hanging += 1
            if self._parked is not None and not self._parked.done():
                self._parked.set_result(None)
            await asyncio.get_running_loop().create_future()  # never answered
        return IpDiscoveryResponse(ssrc, "203.0.113.7", 50000)

    def start_keepalive(self, interval: float = 5.0) -> None:
        self.keepalive = interval

    def send(self, datagram: bytes) -> None:
        self.sent.append(datagram)

    def close(self) -> None:
        self.is_open = False
        self.keepalive = None


@dataclass
class Harness:
    """A connection with one run and one session on fake transports."""

    conn: Connection
    run: Run
    session: Session
    ws: FakeWebSocket
    udp: FakeUdp
    readies: list[None] = field(default_factory=list)

    async def feed(self, *messages: gw.GatewayMessage | str | bytes, seq: int = 1) -> None:
        """Hand ``messages`` to the session as server frames, one by one."""
        for message in messages:
            if isinstance(message, (str, bytes)):
                frame = message
            else:
                frame = gw.serialize(message, seq=seq if gw.is_binary(message) else None)
            await self.session.on_frame(frame)

    async def settle(self) -> None:
        """Wait until the session's background tasks are done, or wait on a discovery forever."""
        while True:
            pending = {t for t in self.session._tasks if not t.done()}
            if len(pending) <= self.udp.hanging:
                return
            await asyncio.wait({*pending, self.udp.parked()}, return_when=asyncio.FIRST_COMPLETED)

    async def ready(self, *, ssrc: int = 11, dave_protocol_version: int = 0) -> None:
        """Hello, Ready and the Session Description: the session can send and receive."""
        await self.feed(
            gw.Hello(heartbeat_interval=1000.0),
            gw.Ready(ssrc=ssrc, ip="127.0.0.1", port=9, modes=("aead_aes256_gcm_rtpsize",)),
        )
        await self.settle()
        await self.feed(
            gw.SessionDescription(
                mode="aead_aes256_gcm_rtpsize",
                secret_key=KEY,
                dave_protocol_version=dave_protocol_version,
            )
        )
        await self.settle()


def harness(*, answer: bool = True, **options: Any) -> Harness:
    """A :class:`Harness` (call it on the event loop)."""
    conn = Connection(
        guild_id=GUILD_ID,
        channel_id=CHANNEL_ID,
        user_id=USER_ID,
        session_id="s",
        token="voice-token",
        endpoint="h:1",
        **options,
    )
    ws, udp = FakeWebSocket(), FakeUdp(answer)
    conn.web_socket = ws  # type: ignore[assignment]
    conn.udp = udp  # type: ignore[assignment]
    run = conn._run = Run(conn)
    info = VoiceServerInfo(GUILD_ID, CHANNEL_ID, USER_ID, "s", Secret("voice-token"), "h:1")
    session = run.session = Session(conn, run, info)
    h = Harness(conn, run, session, ws, udp)
    conn.on_ready.subscribe(h.readies.append)
    return h
