"""A hostile network around a real call: legitimate users lose nothing.

Datagrams are sent to the bot's socket from the relay's own address (an
attacker who spoofs the SFU), mixed with a speaker's DAVE call: random bytes,
truncated and bit-flipped copies of real packets, RTP of unknown SSRCs with bad
tags, oversized datagrams, and replays of real packets in bursts. Every frame
the speaker sent must come out of ``on_audio_frame`` once, in order; the junk
is counted by what it is, and never reaches DAVE.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from rxvoice.connection import Connection
from rxvoice.events import AudioFrame, AudioGap, ConnectionState
from rxvoice.protocol.crypto import RtpPacket
from rxvoice.protocol.rtp import DatagramKind, build_header, classify
from rxvoice.testing.sandbox import Sandbox
from tests.integration.conftest import Join
from tests.integration.helpers import Recorder, hear_everything, payloads_of, until_in_group

TICK = 0.02  # one burst of junk per 20 ms frame


def tap(conn: Connection, change: Callable[[bytes], bytes] | None = None) -> list[bytes]:
    """Keep (and maybe change) every datagram the bot's socket reads, before the receiver."""
    seen: list[bytes] = []
    deliver = conn.udp._on_datagrams

    def on_datagrams(batch: list[bytes]) -> None:
        if change is not None:
            batch = [change(d) for d in batch]
        seen.extend(batch)
        deliver(batch)

    conn.udp._on_datagrams = on_datagrams
    return seen


def rtp_of(datagrams: list[bytes]) -> list[bytes]:
    return [d for d in datagrams if classify(d) is DatagramKind.RTP]


def junk(rng: random.Random, real: list[bytes]) -> list[bytes]:
    """One burst: random, truncated, bad tag, unknown SSRC, oversized (and real-looking)."""
    burst = [rng.randbytes(rng.randint(1, 200)) for _ in range(8)]
    for _ in range(8):
        packet = rng.choice(real)
        burst.append(packet[: rng.randrange(1, len(packet))])
        flipped = bytearray(rng.choice(real))
        flipped[rng.randrange(12, len(flipped))] ^= 1 << rng.randrange(8)
        burst.append(bytes(flipped))
    for _ in range(8):
        header = build_header(
            rng.randrange(1 << 16), rng.randrange(1 << 32), rng.randrange(1 << 32)
        )
        burst.append(header + rng.randbytes(rng.randint(20, 160)))
    burst.append(rng.randbytes(3000))  # read cut to the socket's 2048 bytes
    return burst


async def test_hostile_datagrams_cost_legitimate_users_nothing(
    sandbox: Sandbox, join: Join
) -> None:
    speaker = await sandbox.add_speaker(talk=False)
    conn = await join()
    assert conn.user_id is not None and conn.dave is not None
    await until_in_group(conn, speaker.user_id)
    frames = Recorder(conn.on_audio_frame)
    seen = tap(conn)
    await speaker.talk(5)  # some real packets to copy
    await frames.wait_for(lambda fs: len(payloads_of(fs, speaker.user_id)) >= 5)
    received = rtp_of(seen)
    rng = random.Random(12)
    sent = {"junk": 0, "replayed": 0}
    stop = asyncio.Event()

    async def attack() -> None:
        ticks = 0
        while not stop.is_set():
            burst = junk(rng, received)
            sent["junk"] += len(burst)
            if ticks % 5 == 0:
                # 50 copies of one real packet at once: what re-initialised
                # DAVE for everyone when replays reached it.
                burst += [rng.choice(received)] * 50
                sent["replayed"] += 50
            for datagram in burst:
                sandbox.send_udp(conn.user_id or "", datagram)
            ticks += 1
            await asyncio.sleep(TICK)  # pacing the attacker, not waiting for anything

    attacker = asyncio.create_task(attack())
    try:
        await speaker.talk(100)
    finally:
        stop.set()
        await attacker
    await speaker.talk(5)
    expected = await hear_everything(frames, speaker)

    mine = [f for f in frames.items if f.user_id == speaker.user_id]
    assert payloads_of(mine, speaker.user_id) == expected  # nothing lost, nothing changed
    assert len(mine) == len(expected)  # nothing twice
    assert [f.sequence for f in mine] == sorted(f.sequence for f in mine)
    stats = conn.stats
    assert sent["junk"] > 3000 and sent["replayed"] > 500
    assert stats.undecryptable_packets > 0 and stats.malformed_packets > 0
    assert stats.replayed_packets >= sent["replayed"] - 50  # the rest may be stale
    assert stats.dave_failures == 0 and conn.dave.stats.decrypt_failures == 0
    assert conn.dave.stats.recoveries == 0
    assert conn.current_state is ConnectionState.READY


async def test_a_frame_lost_to_dave_reaches_the_user_as_a_counted_gap(
    sandbox: Sandbox, join: Join
) -> None:
    speaker = await sandbox.add_speaker(talk=False)
    conn = await join()
    assert conn.rtp is not None
    await until_in_group(conn, speaker.user_id)
    frames = Recorder(conn.on_audio_frame)
    gaps = Recorder(conn.on_audio_gap)
    await speaker.talk(5)
    await frames.wait_for(lambda fs: len(payloads_of(fs, speaker.user_id)) >= 5)
    target = (speaker.sent[-1].sequence + 10) % 65536
    cipher = conn.rtp.cipher

    def spoil(datagram: bytes) -> bytes:
        """The target frame, its DAVE layer broken but the transport layer intact."""
        packet = cipher.try_open(datagram)
        if not isinstance(packet, RtpPacket) or packet.header.sequence != target:
            return datagram
        h = packet.header
        payload = bytes([packet.payload[0] ^ 1]) + packet.payload[1:]
        nonce = int.from_bytes(datagram[-4:], "big")  # the relay's: the window must not notice
        return cipher.seal(build_header(h.sequence, h.timestamp, h.ssrc), payload, nonce)

    tap(conn, spoil)
    await speaker.talk(20)
    await gaps.wait_for(lambda gs: len(gs) >= 1)
    await frames.wait_for(lambda fs: speaker.sent[-1].sequence in payloads_of(fs, speaker.user_id))
    [gap] = gaps.items
    assert isinstance(gap, AudioGap)
    assert (gap.user_id, gap.sequence, gap.count, gap.dave_lost) == (speaker.user_id, target, 1, 1)
    assert (conn.stats.frames_lost, conn.stats.frames_lost_to_dave) == (1, 1)
    heard = payloads_of(frames.items, speaker.user_id)
    assert target not in heard
    assert len(heard) == len(speaker.sent) - 1
    # Between the frames around it, as it falls in the stream.
    order = [
        item.sequence
        for item in sorted(
            [*frames.items, *gaps.items],
            key=lambda i: i.sequence if isinstance(i, AudioFrame | AudioGap) else 0,
        )
        if item.user_id == speaker.user_id
    ]
    assert order.count(target) == 1
