"""A worker process for the NATS tests: JetStream → ``frames()`` → ``decode_opus()`` → pitch.

Run as ``python -m tests.nats.consumer URL DURABLE ACK_WAIT``. Prints
``frame <user_id> <sequence>`` for every frame it receives, as it receives
it. A ``report`` line on stdin makes it print one JSON line (each user's
dominant frequency and decoded seconds, its counters) and exit.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys

import nats
import numpy as np
from reactivex import operators as ops

from rxvoice import nats as vnats
from rxvoice import operators as vops
from rxvoice.events import AudioFrame, PcmChunk
from rxvoice.testing.packets import dominant_frequency


async def main(url: str, durable: str, ack_wait: float) -> None:
    nc = await nats.connect(url, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
    js = nc.jetstream()
    stats: collections.Counter[str] = collections.Counter()
    chunks: dict[str, list[np.ndarray]] = collections.defaultdict(list)

    def on_frame(frame: AudioFrame) -> None:
        print(f"frame {frame.user_id} {frame.sequence}", flush=True)

    def on_chunk(chunk: PcmChunk) -> None:
        if chunk.user_id is not None and not chunk.concealed:
            chunks[chunk.user_id].append(chunk.pcm)

    subscription = (
        vnats.frames(js, "voice.*.*", durable=durable, ack_wait=ack_wait, stats=stats)
        .pipe(ops.do_action(on_frame), vops.decode_opus(stats=stats))
        .subscribe(on_chunk)
    )
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "report":  # EOF: the test went away
            break
    subscription.dispose()
    report = {
        "pitch": {u: dominant_frequency(np.concatenate(c)) for u, c in chunks.items()},
        "seconds": {u: sum(len(x) for x in c) / 48_000 for u, c in chunks.items()},
        "stats": dict(stats),
    }
    print(json.dumps(report), flush=True)
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
