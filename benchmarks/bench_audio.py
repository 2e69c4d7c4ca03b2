"""Micro-benchmarks of rxvoice's pure audio algorithms.

Run: ``python benchmarks/bench_audio.py [--repeat N]``. Prints microseconds per
operation (best of N runs, so background load shows less). Not a test.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

import numpy as np

from rxvoice.audio import Mixer, OpusDecoder, OpusEncoder, Resampler, mix_blocks, to_mono
from rxvoice.protocol.jitter import JitterBuffer

FRAME = 960
USERS = 99


def best_us(func: Callable[[], object], number: int, repeat: int) -> float:
    """Best-of-``repeat`` time of one call, in microseconds."""
    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e6


def report(name: str, us: float, note: str = "") -> None:
    print(f"{name:<48} {us:9.1f} µs{'  ' + note if note else ''}")


def speech_like(frames: int) -> np.ndarray:
    t = np.arange(frames * FRAME) / 48_000
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 2 * t)) / 48_000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 15))
    x = (6000 * voiced * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.int16)
    return np.stack([x, x], axis=1)


def bench_opus(repeat: int) -> None:
    import opuslib

    pcm = speech_like(50)
    with OpusEncoder(bitrate=64_000) as encoder:
        packets = [encoder.encode(pcm[i : i + FRAME]) for i in range(0, len(pcm), FRAME)]
    ours = OpusDecoder()
    theirs = opuslib.Decoder(48_000, 2)

    def low_level() -> None:
        for p in packets:
            ours.decode(p)

    def high_level() -> None:
        for p in packets:
            theirs.decode(p, FRAME)

    n = len(packets)
    report("opus decode, OpusDecoder (low-level api)", best_us(low_level, 4, repeat) / n, "/frame")
    report("opus decode, opuslib.Decoder.decode", best_us(high_level, 4, repeat) / n, "/frame")
    report("opus conceal (PLC)", best_us(ours.conceal, 200, repeat), "/frame")
    with OpusEncoder(bitrate=64_000) as encoder:
        frame = pcm[:FRAME]
        report(
            "opus encode 20 ms stereo, 64 kbit/s",
            best_us(lambda: encoder.encode(frame), 100, repeat),
        )
    ours.close()


def bench_mix(repeat: int) -> None:
    rng = np.random.default_rng(0)
    blocks = [rng.integers(-8000, 8000, (FRAME, 2), dtype=np.int16) for _ in range(USERS)]
    report(f"mix_blocks, {USERS} users x 20 ms", best_us(lambda: mix_blocks(blocks), 200, repeat))

    mixer: Mixer[int] = Mixer()
    ts = 0

    def tick() -> None:
        nonlocal ts
        for user, b in enumerate(blocks):
            mixer.add(user, b, timestamp=ts)
        mixer.mix()
        ts += FRAME

    report(f"Mixer tick: {USERS} add() + mix()", best_us(tick, 50, repeat))


def bench_resample(repeat: int) -> None:
    block = speech_like(1)
    stereo = Resampler(48_000, 16_000)
    mono = Resampler(48_000, 16_000)
    mono_block = to_mono(block)
    report("resample 20 ms stereo 48k->16k", best_us(lambda: stereo.process(block), 300, repeat))
    report("resample 20 ms mono 48k->16k", best_us(lambda: mono.process(mono_block), 300, repeat))
    report("to_mono 20 ms", best_us(lambda: to_mono(block), 1000, repeat))


def bench_jitter(repeat: int) -> None:
    buffers: list[JitterBuffer[int]] = [JitterBuffer() for _ in range(USERS)]
    seq, now = 0, 0.0

    def in_order() -> None:
        nonlocal seq, now
        ts = seq * FRAME % 2**32
        for ssrc, jb in enumerate(buffers):
            jb.push(seq, ts, ssrc, now)
        seq = (seq + 1) % 65536
        now += 0.02

    per_push = best_us(in_order, 200, repeat) / USERS
    report(f"jitter push in order ({USERS} SSRCs)", per_push, "/push")

    fast: list[JitterBuffer[int]] = [JitterBuffer() for _ in range(USERS)]
    for ssrc, jb in enumerate(fast):
        jb.push(65535, 0, ssrc, 0.0)
    seq3, now3 = 0, 0.0

    def next_in_order() -> None:
        # What the receiver does: push_next, push only when it says no.
        nonlocal seq3, now3
        ts = seq3 * FRAME % 2**32
        for ssrc, jb in enumerate(fast):
            if not jb.push_next(seq3, ts, now3):
                jb.push(seq3, ts, ssrc, now3)
        seq3 = (seq3 + 1) % 65536
        now3 += 0.02

    per_push = best_us(next_in_order, 200, repeat) / USERS
    report(f"jitter push_next in order ({USERS} SSRCs)", per_push, "/push")

    swapped: list[JitterBuffer[int]] = [JitterBuffer() for _ in range(USERS)]
    for jb in swapped:
        jb.push(65535, 0, 0, 0.0)
    seq2, now2 = 0, 0.0

    def reordered() -> None:
        # Every pair arrives swapped: one held packet, then a release of two.
        nonlocal seq2, now2
        for ssrc, jb in enumerate(swapped):
            jb.push((seq2 + 1) % 65536, 0, ssrc, now2)
            jb.push(seq2, 0, ssrc, now2)
        seq2 = (seq2 + 2) % 65536
        now2 += 0.04

    per_push = best_us(reordered, 100, repeat) / (2 * USERS)
    report(f"jitter push, pairs swapped ({USERS} SSRCs)", per_push, "/push")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7, help="runs per benchmark (best is kept)")
    args = parser.parse_args()
    bench_opus(args.repeat)
    bench_mix(args.repeat)
    bench_resample(args.repeat)
    bench_jitter(args.repeat)


if __name__ == "__main__":
    main()
