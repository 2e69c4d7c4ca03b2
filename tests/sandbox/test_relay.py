"""The sandbox's UDP relay (SFU), driven by raw clients (protocol.md §3, §4, §7.3)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rxvoice.errors import DecryptionError, InvalidArgument, ProtocolError
from rxvoice.protocol import gateway as gw
from rxvoice.protocol.crypto import EncryptionMode, RtpCrypto, TransportCipher
from rxvoice.protocol.daveframe import DaveFrame
from rxvoice.protocol.ipdiscovery import IpDiscoveryRequest, IpDiscoveryResponse
from rxvoice.protocol.rtp import RtpHeader, is_rtcp
from rxvoice.testing.sandbox.faults import FaultInjector, Faults
from rxvoice.testing.sandbox.relay import AUDIO_LEVEL_EXTENSION
from tests.sandbox.rawclient import AES, XCHACHA, Harness, RawVoiceClient, harness


async def _pair(
    h: Harness, mode_a: str | None = None, mode_b: str | None = None
) -> tuple[RawVoiceClient, RawVoiceClient]:
    a = await h.joined(mode=mode_a)
    b = await h.joined(mode=mode_b)
    await a.speak(1)
    await b.next(gw.Speaking)
    return a, b


async def test_ip_discovery_answers_with_the_observed_address() -> None:
    async with harness(dave=False) as h:
        a = h.client()
        await a.connect()
        await a.send(a.identify_message())
        ready = await a.next(gw.Ready)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        try:
            await loop.sock_sendto(
                sock, IpDiscoveryRequest(ready.ssrc).serialize(), (ready.ip, ready.port)
            )
            data = await asyncio.wait_for(loop.sock_recv(sock, 100), 5)
            assert len(data) == 74 and data[:4] == b"\x00\x02\x00\x46"
            response = IpDiscoveryResponse.parse(data)
            assert (response.ssrc, response.address, response.port) == (
                ready.ssrc,
                "127.0.0.1",
                sock.getsockname()[1],
            )
            assert data[8 : 8 + 10] == b"127.0.0.1\x00"
            # An unknown SSRC gets no answer; keepalives and junk are ignored.
            await loop.sock_sendto(
                sock, IpDiscoveryRequest(ready.ssrc ^ 1).serialize(), (ready.ip, ready.port)
            )
            await loop.sock_sendto(sock, struct.pack("<I4x", 1), (ready.ip, ready.port))
            await loop.sock_sendto(sock, b"\x01\x02\x03", (ready.ip, ready.port))
            await h.sb.wait_for(
                lambda: (
                    h.sb.counters.get("unknown_ssrc", 0) == 1
                    and h.sb.counters.get("udp_keepalives", 0) == 1
                    and h.sb.counters.get("udp_junk", 0) == 1
                )
            )
        finally:
            sock.close()
        assert h.sb.counters["ip_discovery"] == 1


@pytest.mark.parametrize(
    ("mode_a", "mode_b"), [(AES, XCHACHA), (XCHACHA, AES), (AES, AES), (XCHACHA, XCHACHA)]
)
async def test_relay_reencrypts_per_recipient(mode_a: str, mode_b: str) -> None:
    async with harness(dave=False, rtp_extensions=False, rtcp_interval=0) as h:
        a, b = await _pair(h, mode_a, mode_b)
        assert a.rtp is not None and b.cipher is not None and b.cipher.mode == mode_b
        key_a = a.of(gw.SessionDescription)[0].secret_key
        # a's nonces start at 1001, so the relay's counter for b (1, 2, ...) is visibly its own.
        a.rtp = RtpCrypto(EncryptionMode(mode_a), key_a, a.ssrc, nonce=1000)
        frames = [bytes([i]) * (20 + i) for i in range(1, 6)]
        sent = []
        for frame in frames:
            seq, ts = a.rtp.sequence, a.rtp.timestamp
            a.send_opus(frame)
            sent.append((seq, ts))
        for i, frame in enumerate(frames):
            raw, packet = await b.recv_rtp()
            header = packet.header
            assert (header.sequence, header.timestamp) == sent[i]
            assert header.ssrc == a.ssrc and header.payload_type == 120 and not header.csrcs
            assert packet.payload == frame
            # The relay's own nonce counter for b (1, 2, ...), not a's.
            assert int.from_bytes(raw[-4:], "big") == i + 1
            # Only b's key opens it.
            with pytest.raises(DecryptionError):
                TransportCipher(EncryptionMode(mode_a), key_a).open(raw)


async def test_xchacha_only_server() -> None:
    async with harness(dave=False, modes=(XCHACHA,)) as h:
        a, b = await _pair(h)
        assert a.of(gw.Ready)[0].modes == (XCHACHA,)
        assert a.of(gw.SessionDescription)[0].mode == XCHACHA
        a.send_opus(b"hello opus")
        _, packet = await b.recv_rtp()
        assert packet.payload == b"hello opus"


async def test_header_extensions_and_rtcp_reach_clients() -> None:
    async with harness(dave=False, rtcp_interval=2) as h:
        a, b = await _pair(h)
        assert b.cipher is not None
        for i in range(4):
            a.send_opus(b"frame %d" % i)
        rtp, rtcp = [], []
        while len(rtp) < 4:
            data = await b.recv_datagram()
            (rtcp if is_rtcp(data) else rtp).append(data)
        while len(rtcp) < 2:
            rtcp.append(await b.recv_datagram())
        extended = [d for d in rtp if RtpHeader.parse(d).extension_profile == 0xBEDE]
        plain = [d for d in rtp if RtpHeader.parse(d).extension_profile is None]
        assert len(extended) == 2 and len(plain) == 2
        for data in extended:
            packet = b.cipher.open(data)
            assert packet.extension == AUDIO_LEVEL_EXTENSION
            assert packet.payload.startswith(b"frame ")
        for data in rtcp:
            # RTCP RR (PT 201), encrypted rtpsize-style: the 8-byte header is the AAD.
            assert data[1] == 201 and is_rtcp(data)
            key = b.of(gw.SessionDescription)[0].secret_key
            nonce = data[-4:] + bytes(8)
            block = AESGCM(key).decrypt(nonce, data[8:-4], data[:8])
            # The report is about the recipient's own stream, as an SFU's RR is.
            assert struct.unpack(">I", block[:4])[0] == b.ssrc


async def test_media_before_speaking_is_dropped() -> None:
    async with harness(dave=False) as h:
        a = await h.joined()
        b = await h.joined()
        a.send_opus(b"too early")
        await h.sb.wait_for(lambda: h.sb.counters.get("rtp_before_speaking", 0) == 1)
        await a.speak(1)
        await b.next(gw.Speaking)
        a.send_opus(b"now")
        _, packet = await b.recv_rtp()
        assert packet.payload == b"now"


async def test_dave_frames_are_not_forwarded_to_non_dave_clients() -> None:
    async with harness(dave=True) as h:
        a = await h.joined()
        legacy = await h.joined(max_dave=0)
        assert legacy.of(gw.SessionDescription)[0].dave_protocol_version == 0
        await a.speak(1)
        await legacy.next(gw.Speaking)
        fake = DaveFrame(ciphertext=b"x" * 20, tag=bytes(8), nonce=1).serialize()
        a.send_opus(fake)
        a.send_opus(b"plain opus")
        _, packet = await legacy.recv_rtp()
        assert packet.payload == b"plain opus"
        assert h.sb.counters["dave_frames_withheld"] == 1


async def test_network_faults() -> None:
    async with harness(dave=False, rtp_extensions=False, rtcp_interval=0) as h:
        a, b = await _pair(h)
        assert b.cipher is not None
        h.sb.set_faults(loss=1.0)
        for _ in range(5):
            a.send_opus(b"lost")
        await h.sb.wait_for(lambda: h.sb.counters.get("lost", 0) == 5)
        h.sb.set_faults(loss=0.0, duplicate=1.0)
        a.send_opus(b"twice")
        assert (await b.recv_rtp())[1].payload == b"twice"
        assert (await b.recv_rtp())[1].payload == b"twice"
        h.sb.set_faults(duplicate=0.0, corrupt=1.0)
        a.send_opus(b"corrupted")
        with pytest.raises(DecryptionError):
            await b.recv_rtp()
        h.sb.set_faults(corrupt=0.0, garbage=1.0, seed=3)
        a.send_opus(b"after garbage")
        junk = await b.recv_datagram()
        assert b.cipher is not None
        with pytest.raises(ProtocolError):  # random bytes: malformed or undecryptable
            b.cipher.open(junk)
        assert (await b.recv_rtp())[1].payload == b"after garbage"
        assert h.sb.counters["garbage"] == 1


def test_fault_injector_is_deterministic() -> None:
    faults = Faults(
        loss=0.3, duplicate=0.2, reorder=0.2, jitter=0.01, corrupt=0.1, truncate=0.1, seed=42
    )
    plans = []
    for _ in range(2):
        injector = FaultInjector(faults)
        plans.append([injector.plan(bytes(40)) for _ in range(200)])
    assert plans[0] == plans[1]
    flat = [p for plan in plans[0] for p in plan]
    assert sum(1 for plan in plans[0] if not plan) > 30  # losses happen
    assert any(delay >= faults.reorder_delay for delay, _ in flat)  # reordering delays
    assert any(len(d) < 40 for _, d in flat)  # truncation
    assert FaultInjector().plan(b"abc") == [(0.0, b"abc")]
    with pytest.raises(InvalidArgument, match="probability"):
        Faults(loss=1.5)
    with pytest.raises(ValueError, match="seconds"):  # still a ValueError, as before
        Faults(jitter=11.0)


KEEPALIVE = struct.pack("<I4x", 7)  # discord.js: a u32 LE counter and 4 zero bytes (§3.2)


async def test_keepalives_are_counted_and_never_answered() -> None:
    async with harness(dave=False, rtcp_interval=0) as h:
        a, b = await _pair(h)
        await b.speak(1)
        await a.next(gw.Speaking)
        assert a.udp is not None and b.udp is not None and a.cipher is not None
        assert b.cipher is not None
        for count, client in enumerate((a, b), 1):
            client.udp.sendto(KEEPALIVE)
            await h.sb.wait_for(lambda n=count: h.sb.counters.get("udp_keepalives", 0) == n)
        # Loopback UDP keeps order: an echo, sent while the keepalive was handled,
        # would arrive before the RTP sent after it. The first datagram is the RTP.
        a.send_opus(b"to b")
        assert b.cipher.open(await b.recv_datagram()).payload == b"to b"
        b.send_opus(b"to a")
        assert a.cipher.open(await a.recv_datagram()).payload == b"to a"
        assert len(a.arrivals) == len(b.arrivals) == 1
        assert h.sb.counters["rtp_relayed"] == 2


async def test_rtcp_from_clients_is_counted_and_ignored() -> None:
    async with harness(dave=False, rtcp_interval=0) as h:
        a, b = await _pair(h)
        assert a.udp is not None and b.cipher is not None
        # A receiver report as a client would send it (rtpsize: 8 clear bytes, then sealed).
        report = struct.pack(">BBHI", 0x81, 201, 7, a.ssrc) + bytes(24 + 16 + 4)
        assert is_rtcp(report)
        a.udp.sendto(report)
        await h.sb.wait_for(lambda: h.sb.counters.get("rtcp_received", 0) == 1)
        a.send_opus(b"after rtcp")
        assert b.cipher.open(await b.recv_datagram()).payload == b"after rtcp"
        assert len(b.arrivals) == 1 and not a.arrivals
        assert h.sb.counters["rtp_relayed"] == 1
        assert "decrypt_failures" not in h.sb.counters and "udp_junk" not in h.sb.counters


async def test_each_recipient_has_its_own_nonce_counter() -> None:
    async with harness(dave=False, rtcp_interval=0) as h:
        clients = [await h.joined(mode=mode) for mode in (AES, XCHACHA, AES)]
        for i, c in enumerate(clients):
            assert c.cipher is not None
            key = c.of(gw.SessionDescription)[0].secret_key
            # Senders' own nonces start far away (1001, 2001, 3001), so they cannot be confused.
            c.rtp = RtpCrypto(c.cipher.mode, key, c.ssrc, nonce=1000 * (i + 1))
            await c.speak(1)
        for c in clients:
            await c.wait_until(lambda c=c: len(c.of(gw.Speaking)) == 2)
        # Interleaved senders: a shared counter, or the sender's, would show up as gaps.
        script = [0, 0, 1, 0, 2, 1, 2, 0]
        nonces: dict[str, list[int]] = {c.user_id: [] for c in clients}
        for step, index in enumerate(script):
            sender = clients[index]
            sender.send_opus(b"step %d" % step)
            for other in clients:
                if other is sender:
                    continue
                raw, packet = await other.recv_rtp()
                assert packet.header.ssrc == sender.ssrc and packet.payload == b"step %d" % step
                nonces[other.user_id].append(int.from_bytes(raw[-4:], "big"))
        for i, c in enumerate(clients):
            received = sum(1 for index in script if index != i)
            assert nonces[c.user_id] == list(range(1, received + 1))
        assert all(c.datagrams.empty() for c in clients)


def _planned_delays(faults: Faults, count: int) -> list[float]:
    """The delays the relay's injector will choose for its next ``count`` datagrams
    (one datagram out per datagram in: no loss, duplicates or garbage)."""
    injector = FaultInjector(faults)
    plans = [injector.plan(bytes(40)) for _ in range(count)]
    assert all(len(plan) == 1 for plan in plans)
    return [plan[0][0] for plan in plans]


async def test_reorder_fault_end_to_end() -> None:
    async with harness(dave=False, rtp_extensions=False, rtcp_interval=0) as h:
        a, b = await _pair(h)
        assert a.rtp is not None
        count = 12
        faults = h.sb.set_faults(reorder=0.3, reorder_delay=0.15, seed=4)
        delays = _planned_delays(faults, count)
        sent = []
        for i in range(count):
            sent.append(a.rtp.sequence)
            a.send_opus(bytes([i + 1]) * 12)
        held = [seq for seq, delay in zip(sent, delays, strict=True) if delay > 0]
        prompt = [seq for seq, delay in zip(sent, delays, strict=True) if delay == 0]
        assert held and prompt and sent.index(held[0]) < sent.index(prompt[-1])
        arrived = []
        for _ in range(count):
            _, packet = await b.recv_rtp()
            arrived.append(packet.header.sequence)
            assert packet.payload == bytes([sent.index(packet.header.sequence) + 1]) * 12
        # Held packets are overtaken by the ones after them; nothing is lost.
        assert arrived == prompt + held
        assert arrived != sent and sorted(arrived) == sorted(sent)
        assert h.sb.counters["reordered"] == len(held)
        assert b.datagrams.empty()


async def test_truncate_fault_end_to_end() -> None:
    async with harness(dave=False, rtp_extensions=False, rtcp_interval=0) as h:
        a, b = await _pair(h)
        assert a.rtp is not None and b.cipher is not None
        h.sb.set_faults(truncate=1.0, seed=1)
        payload = b"cut short " * 4
        seq, ts = a.rtp.sequence, a.rtp.timestamp
        a.send_opus(payload)
        cut = await b.recv_datagram()
        h.sb.set_faults(truncate=0.0)
        # What the relay sealed for b (its nonce 1) before the fault cut it.
        header = RtpHeader(sequence=seq, timestamp=ts, ssrc=a.ssrc).serialize()
        whole = b.cipher.seal(header, payload, 1)
        assert 0 < len(cut) < len(whole) and whole.startswith(cut)
        with pytest.raises(ProtocolError):
            b.cipher.open(cut)
        assert h.sb.counters["truncated"] == 1
        # The stream goes on intact once the fault is off.
        a.send_opus(b"whole")
        raw, packet = await b.recv_rtp()
        assert packet.payload == b"whole" and int.from_bytes(raw[-4:], "big") == 2


async def test_jitter_fault_delays_within_bounds() -> None:
    async with harness(dave=False, rtp_extensions=False, rtcp_interval=0) as h:
        a, b = await _pair(h)
        assert a.rtp is not None
        loop = asyncio.get_running_loop()
        count, jitter = 10, 0.08
        faults = h.sb.set_faults(jitter=jitter, seed=2)
        delays = _planned_delays(faults, count)
        assert all(0.0 <= d <= jitter for d in delays)
        assert max(delays) - min(delays) > jitter / 2  # a spread worth measuring
        sent_at: dict[int, float] = {}
        for i in range(count):
            sent_at[a.rtp.sequence] = loop.time()
            a.send_opus(bytes([i + 1]) * 12)
        for _ in range(count):
            await b.recv_rtp()
        arrived_at = {RtpHeader.parse(d).sequence: t for t, d in b.arrivals}
        assert arrived_at.keys() == sent_at.keys()
        for (seq, sent), delay in zip(sent_at.items(), delays, strict=True):
            latency = arrived_at[seq] - sent
            # Never earlier than the planned delay (loop clock); the upper bound is generous.
            assert delay - 0.002 <= latency <= jitter + 0.5, (seq, delay, latency)
