"""A worker process: consumes some partitions of the voice stream, writes per-utterance WAVs.

Each worker of the "transcriber" group owns partitions of the stream (see
``rxvoice.nats.stream_config(partitions=...)``): every frame of one user lands in
one partition, in order, so the worker decodes each user's audio exactly as an
in-process pipeline would::

    packets(partition) ─ to_frames ─ decode_opus ─ utterances ─ WAV ─ transcribe

``utterances()`` cuts each user's speech by voice activity (with pre-roll, so no
onset is lost) into 16 kHz mono PCM, placed by call time: the frames' arrival at
the bot, which ``to_frames`` moves onto this process's clock. Each utterance
becomes a 16 kHz mono WAV under ``OUT/<guild>/<user>/<when it was said, ms>.wav``
and one JSON line on stdout. ``transcribe()`` is where a speech-to-text engine
plugs in.

On SIGTERM or SIGINT it stops consuming, writes the utterances still open and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import wave
from pathlib import Path
from typing import Any

import nats
import numpy as np
from reactivex import operators as ops
from reactivex.subject import Subject

from rxvoice import nats as vnats
from rxvoice import operators as vops
from rxvoice.events import Utterance
from rxvoice.nats.wire import VoicePacket


def transcribe(wav: Path, pcm: np.ndarray) -> str | None:
    """Turn one utterance into text: the place where a speech-to-text engine plugs in.

    ``pcm`` is int16 mono at 16 kHz, what Whisper-family engines take; ``wav`` is the
    same audio on disk. With faster-whisper installed (``pip install faster-whisper``;
    it downloads its model on first use) this returns its transcript; without an
    engine it returns ``None`` and the WAVs are the result.
    """
    try:
        from faster_whisper import WhisperModel  # type: ignore[import-not-found]
    except ImportError:
        return None
    global _model
    if _model is None:
        _model = WhisperModel("base.en", compute_type="int8")
    segments, _ = _model.transcribe(pcm.astype(np.float32) / 32768.0)
    return " ".join(segment.text.strip() for segment in segments)


_model: Any = None


class UtteranceWriter:
    """Writes each utterance as a WAV file and a JSON line, with its text if an engine is there."""

    def __init__(self, out: Path, guild_of: dict[str, str]) -> None:
        self.out = out
        self.guild_of = guild_of
        # Call times are on this process's event-loop clock; file names and said_at on
        # the wall clock, which other machines share.
        self.loop_to_wall = time.time() - asyncio.get_running_loop().time()

    def __call__(self, utterance: Utterance) -> None:
        """Write one utterance."""
        user_id = utterance.user_id or f"ssrc-{utterance.ssrc}"
        guild = self.guild_of.get(user_id, "unknown")
        said = utterance.start + self.loop_to_wall
        path = self.out / guild / user_id / f"{int(said * 1000)}.wav"
        pcm = utterance.pcm[:, 0]
        line: dict[str, Any] = {
            "guild_id": guild,
            "user_id": user_id,
            "said_at": round(said, 3),
            "seconds": round(utterance.duration, 2),
            "wav": str(path),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "xb") as file, wave.open(file, "wb") as wav:  # never replaces a file
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(utterance.sample_rate)
                wav.writeframes(pcm.astype("<i2").tobytes())
        except OSError as error:  # a full disk, a file in the way: say so, go on consuming
            print(json.dumps({**line, "error": str(error)}), flush=True)
            return
        print(json.dumps({**line, "text": transcribe(path, pcm)}), flush=True)


async def main(args: argparse.Namespace) -> int:
    """Consume until SIGTERM or SIGINT, then write the utterances still open."""
    stop = asyncio.Event()
    failed: list[Exception] = []

    def fail(error: Exception) -> None:
        print(f"worker {args.partition}: {error}", file=sys.stderr)
        failed.append(error)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(args.nats, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    js = nc.jetstream()
    guild_of: dict[str, str] = {}

    def remember(packet: VoicePacket) -> None:
        if packet.user_id is not None:
            guild_of[packet.user_id] = packet.guild_id

    stopping: Subject[None] = Subject()
    # The consumer group "transcriber": one durable consumer per partition.
    subscription = (
        vnats.packets(
            js, vnats.partition_subjects(args.partition), durable=f"transcriber-{args.partition}"
        )
        .pipe(
            ops.do_action(remember),
            vnats.to_frames(),
            ops.take_until(stopping),  # completing: utterances() emits those still open
            vops.decode_opus(),
            vops.utterances(),
        )
        .subscribe(UtteranceWriter(Path(args.out), guild_of), on_error=fail)
    )
    print(json.dumps({"worker": args.partition, "subscribed": True}), flush=True)
    await stop.wait()
    stopping.on_next(None)
    subscription.dispose()
    await nc.close()
    return 1 if failed else 0


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats", required=True, help="NATS URL")
    parser.add_argument("--partition", type=int, required=True, help="the partition to consume")
    parser.add_argument("--out", default="out/many_guilds", help="where the WAVs go")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
