"""UdpTransport on real loopback sockets: batched draining, discovery, keepalives, close."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from rxvoice.errors import UsageError
from rxvoice.protocol.ipdiscovery import IpDiscoveryResponse, Keepalive
from rxvoice.transport.udp import UdpTransport


@pytest.fixture
async def server() -> AsyncIterator[socket.socket]:
    """A plain UDP socket on loopback standing in for the voice server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)  # for loop.sock_recvfrom
    yield sock
    sock.close()


async def test_a_burst_is_drained_in_few_wake_ups(server: socket.socket) -> None:
    batches: list[list[bytes]] = []
    done = asyncio.Event()

    def received(batch: list[bytes]) -> None:
        batches.append(batch)
        if sum(map(len, batches)) >= 200:
            done.set()

    udp = UdpTransport(received)
    await udp.open(*server.getsockname())
    try:
        local = udp.local_address
        assert local is not None
        # The whole burst is in the kernel before the loop gets to read any of it.
        for n in range(200):
            server.sendto(n.to_bytes(2, "big") + bytes(30), local)  # small: never blocks
        await asyncio.wait_for(done.wait(), 10)
        received_in_order = [int.from_bytes(d[:2], "big") for b in batches for d in b]
        assert received_in_order == list(range(200))
        assert udp.stats.datagrams_received == 200
        assert udp.stats.batches == len(batches) < 10  # not one wake-up per datagram
    finally:
        udp.close()


async def test_discovery_reply_is_consumed_and_other_datagrams_pass(
    server: socket.socket,
) -> None:
    got: list[bytes] = []
    udp = UdpTransport(got.extend)
    await udp.open(*server.getsockname())
    try:
        local = udp.local_address
        assert local is not None
        discovery = asyncio.ensure_future(udp.discover(ssrc=7))
        request, client = await asyncio.wait_for(
            asyncio.get_running_loop().sock_recvfrom(server, 100), 10
        )
        assert len(request) == 74 and client == local
        reply = IpDiscoveryResponse(ssrc=7, address="203.0.113.9", port=50000).serialize()
        server.sendto(reply, local)
        result = await asyncio.wait_for(discovery, 10)
        assert (result.address, result.port) == ("203.0.113.9", 50000)
        assert got == []  # the reply went to discover(), not to the receiver
    finally:
        udp.close()


async def test_keepalives_count_up_and_close_releases_the_socket(server: socket.socket) -> None:
    udp = UdpTransport(lambda batch: None)
    await udp.open(*server.getsockname())
    sock = udp._sock
    assert sock is not None
    udp.start_keepalive(interval=0.01)
    loop = asyncio.get_running_loop()
    counters = []
    for _ in range(3):
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(server, 100), 10)
        counters.append(Keepalive.parse(data).counter)
    assert counters == sorted(counters) and len(set(counters)) == 3
    udp.close()
    assert sock.fileno() == -1 and not udp.is_open
    udp.close()  # idempotent
    with pytest.raises(UsageError):
        udp.send(b"x")


async def test_a_raising_callback_is_counted_and_reading_goes_on(
    server: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[bytes] = []
    first, second = asyncio.Event(), asyncio.Event()

    def received(batch: list[bytes]) -> None:
        got.extend(batch)
        (second if first.is_set() else first).set()
        if batch[0] == b"boom":
            raise RuntimeError("a bug downstream")

    udp = UdpTransport(received)
    await udp.open(*server.getsockname())
    try:
        local = udp.local_address
        assert local is not None
        server.sendto(b"boom", local)
        await asyncio.wait_for(first.wait(), 10)  # the next one is a batch of its own
        server.sendto(b"after", local)
        await asyncio.wait_for(second.wait(), 10)
        assert got == [b"boom", b"after"]
        assert udp.stats.callback_errors == 1
        assert "UDP receive callback failed" in caplog.text
    finally:
        udp.close()


async def test_a_busy_socket_is_drained_on_a_tick_and_a_quiet_one_on_readiness(
    server: socket.socket,
) -> None:
    arrived: list[tuple[float, list[bytes]]] = []
    changed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def received(batch: list[bytes]) -> None:
        arrived.append((loop.time(), batch))
        changed.set()

    async def until(count: int) -> None:
        while sum(len(batch) for _, batch in arrived) < count:
            changed.clear()
            await asyncio.wait_for(changed.wait(), 10)

    quiet = asyncio.Event()  # a tick found nothing: waiting for readiness again

    class Watched(UdpTransport):
        def _on_tick(self) -> None:
            super()._on_tick()
            if self._tick is None:
                quiet.set()

    udp = Watched(received, drain_interval=0.2)
    await udp.open(*server.getsockname())
    try:
        local = udp.local_address
        assert local is not None
        server.sendto(b"1", local)
        await until(1)
        server.sendto(b"2", local)  # a second wake-up within the interval: ticks from now
        await until(2)
        server.sendto(b"3", local)
        server.sendto(b"4", local)
        await until(4)
        assert [batch for _, batch in arrived] == [[b"1"], [b"2"], [b"3", b"4"]]
        assert arrived[2][0] - arrived[1][0] > 0.15  # read by the tick, not on readiness
        # The next tick finds nothing: back to waking on readiness, nothing is missed.
        await asyncio.wait_for(quiet.wait(), 10)
        server.sendto(b"5", local)
        await until(5)
        assert arrived[-1][1] == [b"5"]
    finally:
        udp.close()
