"""A compact raw voice client for the sandbox tests: websockets + UDP + davey.

It uses only the protocol layer (message parse/serialize, TransportCipher,
RtpCrypto, IP discovery) and never rxvoice's Connection or transports, so the
tests prove the sandbox on their own. DAVE is the sandbox's sans-I/O
:class:`~rxvoice.testing.sandbox.daveclient.DaveClient` (discord.js's
DAVESession: key package at op 4, commit on proposals, op 23 after a commit or
welcome, op 31 + reinit on a bad one), fed every message, unless
``auto_dave=False`` (then it only tracks the roster and SSRCs).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import websockets
from websockets.asyncio.client import ClientConnection

from rxvoice.protocol import gateway as gw
from rxvoice.protocol.crypto import EncryptionMode, RtpCrypto, TransportCipher
from rxvoice.protocol.ipdiscovery import IpDiscoveryRequest, IpDiscoveryResponse
from rxvoice.protocol.rtp import DatagramKind, RtpHeader, RtpPacket, classify
from rxvoice.testing.sandbox.daveclient import DaveClient

if TYPE_CHECKING:
    import davey

M = TypeVar("M")
_ROSTER = (gw.ClientsConnect, gw.ClientDisconnect, gw.Speaking)
AES = EncryptionMode.AEAD_AES256_GCM_RTPSIZE.value
XCHACHA = EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE.value


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, client: RawVoiceClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client._datagram(data)


class RawVoiceClient:
    """One raw voice client. Create, then ``await connect()`` and ``await handshake()``."""

    def __init__(
        self,
        url: str,
        ssl_context: ssl.SSLContext,
        *,
        server_id: str,
        user_id: str,
        session_id: str,
        token: str,
        channel_id: str,
        max_dave: int = 1,
        auto_dave: bool = True,
        heartbeat: bool = True,
        suppress_ops: frozenset[int] = frozenset(),
    ) -> None:
        self.url, self.ssl = url, ssl_context
        self.server_id, self.user_id, self.session_id = server_id, user_id, session_id
        self.token, self.channel_id, self.max_dave = token, channel_id, max_dave
        self.auto_dave, self.heartbeat = auto_dave, heartbeat
        self.suppress_ops = suppress_ops  # ops this client "forgets" to send
        self.ws: ClientConnection | None = None
        self.messages: list[gw.Envelope] = []
        self._taken: dict[type, int] = {}
        self._changed = asyncio.Event()
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self.last_seq = -1
        self._tasks: list[asyncio.Task[None]] = []
        # media
        self.ssrc = 0
        self.udp: asyncio.DatagramTransport | None = None
        self.datagrams: asyncio.Queue[bytes] = asyncio.Queue()
        self.arrivals: list[tuple[float, bytes]] = []  # (loop time, datagram), discovery aside
        self._discovery: asyncio.Future[IpDiscoveryResponse] | None = None
        self.cipher: TransportCipher | None = None
        self.rtp: RtpCrypto | None = None
        self.e2ee = DaveClient(user_id, channel_id)
        self.sent_ops: list[tuple[int, int | None]] = []  # (op, transition id)

    # -- WebSocket ------------------------------------------------------------------------

    async def connect(self) -> None:
        self.ws = await websockets.connect(self.url, ssl=self.ssl, max_size=1 << 22)
        self._tasks.append(asyncio.get_running_loop().create_task(self._read()))

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for frame in self.ws:
                envelope = gw.parse(frame, from_server=True)
                if envelope.seq is not None:
                    self.last_seq = envelope.seq
                self.messages.append(envelope)
                m = envelope.message
                if isinstance(m, gw.Hello) and self.heartbeat:
                    self._tasks.append(
                        asyncio.get_running_loop().create_task(self._beat(m.heartbeat_interval))
                    )
                self._track(m)
                if self.auto_dave or isinstance(m, _ROSTER):
                    for reply in self.e2ee.receive(m):
                        await self.send(reply)
                self._pulse()
        except websockets.ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else None
            self.closed.set()
            self._pulse()

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    async def _beat(self, interval_ms: float) -> None:
        # As discord.js: the first beat one interval after Hello (a timer, not a wait).
        nonce = 0
        while self.ws is not None and not self.closed.is_set():
            await asyncio.sleep(interval_ms / 1000)
            nonce += 1
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.send(gw.Heartbeat(nonce=nonce, seq_ack=self.last_seq))

    async def send(self, message: gw.GatewayMessage) -> None:
        assert self.ws is not None
        if message.op in self.suppress_ops:
            return
        if isinstance(message, gw.DaveTransitionReady | gw.DaveMlsInvalidCommitWelcome):
            self.sent_ops.append((message.op, message.transition_id))
        elif gw.is_binary(message) or isinstance(message, gw.Identify):
            self.sent_ops.append((message.op, None))
        await self.ws.send(gw.serialize(message))

    async def send_raw(self, frame: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(frame)

    async def next(self, cls: type[M], timeout: float = 10.0) -> M:
        """The next message of type ``cls`` not yet returned by ``next``."""
        found: list[M] = []

        def ready() -> bool:
            seen = [e.message for e in self.messages if isinstance(e.message, cls)]
            index = self._taken.get(cls, 0)
            if len(seen) > index:
                found.append(seen[index])
                self._taken[cls] = index + 1
                return True
            return False

        await self.wait_until(ready, timeout)
        return found[0]

    def of(self, cls: type[M]) -> list[M]:
        return [e.message for e in self.messages if isinstance(e.message, cls)]

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code

    def identify_message(self) -> gw.Identify:
        return gw.Identify(
            server_id=self.server_id,
            user_id=self.user_id,
            session_id=self.session_id,
            token=self.token,
            max_dave_protocol_version=self.max_dave,
        )

    # -- handshake and media --------------------------------------------------------------

    async def handshake(self, mode: str | None = None) -> gw.SessionDescription:
        """Identify, discover, select the protocol; returns op 4."""
        await self.send(self.identify_message())
        ready = await self.next(gw.Ready)
        self.ssrc = ready.ssrc
        loop = asyncio.get_running_loop()
        self.udp, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self), remote_addr=(ready.ip, ready.port)
        )
        address, port = await self.discover()
        chosen = mode or (AES if AES in ready.modes else XCHACHA)
        await self.send(gw.SelectProtocol(address=address, port=port, mode=chosen))
        description = await self.next(gw.SessionDescription)
        return description

    async def discover(self) -> tuple[str, int]:
        assert self.udp is not None
        self._discovery = asyncio.get_running_loop().create_future()
        self.udp.sendto(IpDiscoveryRequest(self.ssrc).serialize())
        response = await asyncio.wait_for(self._discovery, 5.0)
        return response.address, response.port

    def _datagram(self, data: bytes) -> None:
        if len(data) == 74 and data[1] == 2 and self._discovery and not self._discovery.done():
            self._discovery.set_result(IpDiscoveryResponse.parse(data))
            return
        self.arrivals.append((asyncio.get_running_loop().time(), data))
        self.datagrams.put_nowait(data)

    async def speak(self, flags: int = 1) -> None:
        await self.send(gw.Speaking(speaking=flags, ssrc=self.ssrc, delay=0))

    def send_opus(self, opus: bytes) -> bytes:
        """Send one frame (DAVE-encrypted when ready); returns the payload sent."""
        assert self.rtp is not None and self.udp is not None
        payload, _ = self.e2ee.encrypt(opus)
        self.udp.sendto(self.rtp.seal_opus(payload))
        return payload

    async def recv_datagram(self, timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(self.datagrams.get(), timeout)

    async def recv_rtp(self, timeout: float = 5.0) -> tuple[bytes, RtpPacket]:
        """The next RTP datagram (RTCP and other kinds skipped), raw and decrypted."""
        assert self.cipher is not None
        async with asyncio.timeout(timeout):
            while True:
                data = await self.datagrams.get()
                if classify(data) is DatagramKind.RTP:
                    return data, self.cipher.open(data)

    def dave_decrypt(self, ssrc: int, payload: bytes) -> bytes:
        heard = self.e2ee.decrypt(ssrc, payload)
        assert heard is not None, f"no op 5 for ssrc {ssrc}"
        return heard[1]

    # -- message tracking -----------------------------------------------------------------

    def _track(self, m: gw.GatewayMessage) -> None:
        if isinstance(m, gw.SessionDescription):
            mode = EncryptionMode(m.mode)
            self.cipher = TransportCipher(mode, m.secret_key)
            if self.rtp is None:
                self.rtp = RtpCrypto(mode, m.secret_key, self.ssrc)

    # -- DAVE state (the DaveClient's) ----------------------------------------------------

    @property
    def ssrc_user(self) -> dict[int, str]:
        return self.e2ee.ssrcs

    @property
    def dave(self) -> davey.DaveSession | None:
        return self.e2ee.session

    @property
    def protocol_version(self) -> int:
        return self.e2ee.protocol_version

    @property
    def pending(self) -> dict[int, int]:
        return self.e2ee.pending

    @property
    def dave_errors(self) -> collections.deque[str]:
        return self.e2ee.errors

    @property
    def epoch(self) -> int | None:
        return self.e2ee.epoch

    @property
    def dave_ready(self) -> bool:
        return self.e2ee.ready

    # -- shutdown -------------------------------------------------------------------------

    async def close(self, code: int = 1000) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close(code)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.udp is not None:
            self.udp.close()


def header_of(datagram: bytes) -> RtpHeader:
    return RtpHeader.parse(datagram)


class Harness:
    """A sandbox plus the raw clients a test opened (closed at the end)."""

    def __init__(self, sb: Any) -> None:
        self.sb = sb
        self.clients: list[RawVoiceClient] = []
        self._next_user = 100_000_000_000_000_000

    def user_id(self) -> str:
        self._next_user += 1
        return str(self._next_user)

    def client(self, user_id: str | None = None, **kwargs: Any) -> RawVoiceClient:
        """A connected-later client with freshly minted credentials."""
        user_id = user_id or self.user_id()
        creds = self.sb.voice_credentials(user_id)
        options: dict[str, Any] = {
            "server_id": self.sb.guild_id,
            "user_id": user_id,
            "session_id": creds.session_id,
            "token": creds.token,
            "channel_id": creds.channel_id,
        }
        options.update(kwargs)
        client = RawVoiceClient(self.sb.voice_url, self.sb.client_ssl(), **options)
        self.clients.append(client)
        return client

    async def joined(
        self, user_id: str | None = None, *, mode: str | None = None, **kwargs: Any
    ) -> RawVoiceClient:
        """A client that has finished the handshake (op 4 received)."""
        client = self.client(user_id, **kwargs)
        await client.connect()
        await client.handshake(mode)
        return client

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()


@contextlib.asynccontextmanager
async def harness(**sandbox_options: Any) -> Any:
    from rxvoice.testing.sandbox import Sandbox

    async with Sandbox(**sandbox_options) as sb:
        h = Harness(sb)
        try:
            yield h
        finally:
            await h.aclose()
