"""The voice UDP socket: IP discovery, keepalive, and datagram send/receive.

The receive path drains the socket in batches, and under load on a tick:
asyncio's own datagram transport reads one datagram per event-loop wake-up, and
a wake-up is the dearest part of receiving a packet (tens of µs on a virtual
machine, against ~1 µs for the ``recv`` itself). So a wake-up reads everything
the kernel holds, and while datagrams come faster than :data:`DRAIN_INTERVAL`
apart the transport stops watching the socket and drains it every
:data:`DRAIN_INTERVAL` instead: 99 speakers (4,950 packets/s) then cost 100
wake-ups a second, not thousands, for at most that interval of added latency.
Two ticks in a row that find nothing go back to waking on readiness (one would
not: speakers' packets often come in bursts 20 ms apart), so a quiet call, or
one speaker, adds no latency at all (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from rxvoice.errors import MalformedPacket, ProtocolError, UsageError
from rxvoice.protocol.ipdiscovery import IpDiscoveryRequest, IpDiscoveryResponse, Keepalive
from rxvoice.protocol.rtp import IP_DISCOVERY_SIZE

__all__ = ["DRAIN_INTERVAL", "UdpStats", "UdpTransport"]

logger = logging.getLogger(__name__)

_MAX_DATAGRAM = 2048

DRAIN_INTERVAL = 0.01
"""Seconds between two drains of a busy socket (see the module docstring); the most
latency the tick adds to a packet."""

_QUIET_TICKS = 2  # ticks in a row without a datagram that end draining on a tick


@dataclass(slots=True)
class UdpStats:
    """Counters of one :class:`UdpTransport`.

    Attributes:
        datagrams_received: Datagrams read and passed on (IP discovery replies excluded).
        datagrams_sent: Datagrams handed to the kernel.
        batches: Drains that read at least one datagram.
        send_dropped: Datagrams not sent (a full socket buffer, an ICMP error).
        keepalives_sent: Keepalives sent.
        callback_errors: Batches whose ``on_datagrams`` callback raised (a
            bug: logged; the socket goes on being read).
    """

    datagrams_received: int = 0
    datagrams_sent: int = 0
    batches: int = 0
    send_dropped: int = 0
    keepalives_sent: int = 0
    callback_errors: int = 0


class UdpTransport:
    """A connected, non-blocking UDP socket driven by the event loop.

    Args:
        on_datagrams: Called on the event loop with every batch of received
            datagrams (a list, oldest first). IP discovery replies are consumed
            by :meth:`discover` while it runs and are not passed on. If it
            raises, the error is logged and counted and reading goes on.
        max_batch: The most datagrams read in one drain, so a flood cannot
            starve the rest of the loop.
        drain_interval: Seconds between two drains while datagrams come faster
            than that (see the module docstring); ``0`` drains on every wake-up.

    Attributes:
        drain_interval: As the argument; may be changed at any time.
    """

    def __init__(
        self,
        on_datagrams: Callable[[list[bytes]], None],
        *,
        max_batch: int = 512,
        drain_interval: float = DRAIN_INTERVAL,
    ) -> None:
        self._on_datagrams = on_datagrams
        self._max_batch = max_batch
        self.drain_interval = drain_interval
        self._tick: asyncio.TimerHandle | None = None  # draining on a tick (not watching)
        self._last_wake = float("-inf")
        self._empty_ticks = 0  # ticks in a row that found nothing
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._discovery: asyncio.Future[IpDiscoveryResponse] | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._keepalive_counter = 0
        self.remote: tuple[str, int] | None = None
        self.stats = UdpStats()

    @property
    def is_open(self) -> bool:
        """Whether the socket is open."""
        return self._sock is not None

    @property
    def local_address(self) -> tuple[str, int] | None:
        """The local (host, port) of the socket, once open."""
        return self._sock.getsockname()[:2] if self._sock else None

    async def open(self, host: str, port: int) -> None:
        """Open the socket towards the voice server's ``host:port`` and start reading.

        Raises:
            UsageError: If the transport is already open.
            OSError: If the address cannot be resolved or connected.
        """
        if self._sock is not None:
            raise UsageError("UDP transport is already open")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # A large receive buffer absorbs bursts between two drains.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        self._sock, self._loop = sock, loop
        self.remote = (host, port)
        loop.add_reader(sock.fileno(), self._read_ready)

    async def discover(
        self, ssrc: int, *, attempts: int = 5, timeout: float = 1.0
    ) -> IpDiscoveryResponse:
        """Run IP discovery: learn our external address and port as the server sees them.

        Args:
            ssrc: Our SSRC, from Ready.
            attempts: How many requests to send before giving up (UDP may drop them).
            timeout: Seconds to wait for each reply.

        Returns:
            The parsed discovery response.

        Raises:
            TimeoutError: If no valid reply arrived.
            UsageError: If the transport is not open.
        """
        if self._sock is None or self._loop is None:
            raise UsageError("UDP transport is not open")
        request = IpDiscoveryRequest(ssrc).serialize()
        for _ in range(attempts):
            self._discovery = self._loop.create_future()
            self.send(request)
            try:
                return await asyncio.wait_for(asyncio.shield(self._discovery), timeout)
            except TimeoutError:
                continue
            finally:
                self._discovery = None
        raise TimeoutError(f"no IP discovery reply after {attempts} attempts")

    def send(self, datagram: bytes) -> None:
        """Send one datagram now; a full socket buffer drops it (and counts it)."""
        sock = self._sock
        if sock is None:
            raise UsageError("UDP transport is not open")
        try:
            sock.send(datagram)
        except (BlockingIOError, InterruptedError):
            self.stats.send_dropped += 1
            return
        except OSError as exc:
            # ECONNREFUSED from an earlier ICMP error and the like: log, go on.
            self.stats.send_dropped += 1
            logger.debug("UDP send failed: %s", exc)
            return
        self.stats.datagrams_sent += 1

    def start_keepalive(self, interval: float = 5.0) -> None:
        """Send an 8-byte keepalive now and then every ``interval`` seconds."""
        self.stop_keepalive()
        if self._loop is None:
            raise UsageError("UDP transport is not open")
        self._send_keepalive(interval)

    def stop_keepalive(self) -> None:
        """Stop sending keepalives."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    def close(self) -> None:
        """Close the socket at once. Safe to call more than once and from any state."""
        self.stop_keepalive()
        sock, self._sock = self._sock, None
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        elif sock is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
        if sock is not None:
            sock.close()
        if self._discovery is not None and not self._discovery.done():
            self._discovery.cancel()
        self._discovery = None

    def _send_keepalive(self, interval: float) -> None:
        if self._sock is None or self._loop is None:
            return
        self.send(Keepalive(self._keepalive_counter).serialize())
        self.stats.keepalives_sent += 1
        self._keepalive_counter = (self._keepalive_counter + 1) % (1 << 32)
        self._keepalive = self._loop.call_later(interval, self._send_keepalive, interval)

    def _read_ready(self) -> None:
        """The socket is readable: drain it; if the last wake-up was recent, drain on a tick."""
        loop, sock = self._loop, self._sock
        if loop is None or sock is None:
            return
        self._drain(sock)
        if self._sock is not sock:
            return  # closed meanwhile
        now = loop.time()
        interval = self.drain_interval
        if now - self._last_wake < interval:
            self._empty_ticks = 0
            loop.remove_reader(sock.fileno())
            self._tick = loop.call_at(now + interval, self._on_tick)
        self._last_wake = now

    def _on_tick(self) -> None:
        """Drain; after two ticks that found nothing, wait for readiness again."""
        self._tick = None
        loop, sock = self._loop, self._sock
        if loop is None or sock is None:
            return
        self._empty_ticks = 0 if self._drain(sock) else self._empty_ticks + 1
        if self._sock is not sock:
            return  # closed meanwhile
        if self._empty_ticks < _QUIET_TICKS and self.drain_interval > 0:
            self._tick = loop.call_at(loop.time() + self.drain_interval, self._on_tick)
        else:
            self._last_wake = float("-inf")
            loop.add_reader(sock.fileno(), self._read_ready)

    def _drain(self, sock: socket.socket) -> int:
        """Read what the kernel holds (up to ``max_batch``) and pass it on; return how many."""
        batch: list[bytes] = []
        recv = sock.recv
        for _ in range(self._max_batch):
            try:
                data = recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # ICMP port unreachable surfaces here as ECONNREFUSED; not fatal.
                logger.debug("UDP receive error: %s", exc)
                break
            if len(data) == IP_DISCOVERY_SIZE and self._take_discovery(data):
                continue
            batch.append(data)
        if not batch:
            return 0
        self.stats.datagrams_received += len(batch)
        self.stats.batches += 1
        try:
            self._on_datagrams(batch)
        except Exception:
            # A bug downstream must not reach the event loop's reader callback.
            self.stats.callback_errors += 1
            if self.stats.callback_errors & (self.stats.callback_errors - 1) == 0:
                logger.exception(
                    "UDP receive callback failed (%d times so far)", self.stats.callback_errors
                )
        return len(batch)

    def _take_discovery(self, data: bytes) -> bool:
        future = self._discovery
        if future is None or future.done():
            return False
        try:
            response = IpDiscoveryResponse.parse(data)
        except (MalformedPacket, ProtocolError):
            return False
        future.set_result(response)
        return True
