"""A worker process: consumes some partitions of the voice stream, writes per-utterance WAVs.

Each worker of the "transcriber" group owns partitions of the stream (see
``rxvoice.nats.stream_config(partitions=...)``): every frame of one user lands in
one partition, in order, so the worker decodes each user's audio exactly as an
in-process pipeline would::

    packets(partition) ─ to_frames ─ decode_opus ─ to_mono ─ resample(16 kHz)
        ─┬───────────────────┬─ cut ─ WAV ─ transcribe
         └─ voice_activity ──┘

Each utterance becomes a 16 kHz mono WAV under ``OUT/<guild>/<user>/`` and one JSON
line on stdout. ``transcribe()`` is where a speech-to-text engine plugs in.

On SIGTERM or SIGINT it writes what it holds and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import wave
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import numpy as np
from reactivex import operators as ops

from rxvoice import nats as vnats
from rxvoice import operators as vops
from rxvoice.events import AudioFrame, PcmChunk, VoiceActivityChange
from rxvoice.nats.wire import VoicePacket

RATE = 16_000
RTP_RATE = 48_000
PRE_ROLL = 3  # chunks kept before speech is detected (it is detected late)


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


@dataclass
class _Speech:
    """One user's recent chunks and the utterance being collected."""

    recent: deque[PcmChunk] = field(default_factory=lambda: deque(maxlen=PRE_ROLL + 2))
    current: list[PcmChunk] | None = None
    arrivals: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=16))
    said_at: float = 0.0  # wall-clock arrival of the utterance's first frame


class UtteranceCutter:
    """Cuts each user's chunks into utterances at the voice-activity events.

    Feed it the chunks and, after each chunk, the events derived from it. Speech
    is detected a few chunks after it began, so a few recent chunks are kept and
    those from the event's timestamp on open the utterance; at the stop event the
    chunks from its timestamp on (the detector's hangover) are cut off.

    (rxvoice is getting an ``utterances()`` operator that does this, with pre-roll
    and call times; switch to it when it lands.)
    """

    def __init__(self, out: Path, guild_of: dict[str, str]) -> None:
        self.out = out
        self.guild_of = guild_of
        self.users: dict[str, _Speech] = {}
        self.loop_to_wall = time.time() - asyncio.get_running_loop().time()

    def on_frame(self, frame: AudioFrame) -> None:
        """Note when each frame arrived (to date the utterances)."""
        if frame.user_id is not None:
            speech = self.users.setdefault(frame.user_id, _Speech())
            speech.arrivals.append((frame.timestamp, frame.received_at))

    def on_chunk(self, chunk: PcmChunk) -> None:
        """Keep a user's chunk (recent ones, and the current utterance's)."""
        if chunk.user_id is None:
            return
        speech = self.users.setdefault(chunk.user_id, _Speech())
        speech.recent.append(chunk)
        if speech.current is not None:
            speech.current.append(chunk)

    def on_activity(self, change: VoiceActivityChange) -> None:
        """Open an utterance at speech start, write it at speech end."""
        speech = self.users.get(change.user_id) if change.user_id else None
        if speech is None:
            return
        if change.speaking:
            start = change.timestamp
            speech.current = [c for c in speech.recent if _after(c.timestamp, start)] or list(
                speech.recent
            )[-1:]
            speech.said_at = self._arrival(speech, speech.current[0].timestamp)
        elif speech.current is not None:
            kept = [c for c in speech.current if not _after(c.timestamp, change.timestamp)]
            speech.current = None
            self._write(change.user_id or "", kept, speech)

    def flush(self) -> None:
        """Write the utterances still open (at shutdown)."""
        for user_id, speech in self.users.items():
            if speech.current:
                self._write(user_id, speech.current, speech)
                speech.current = None

    def _arrival(self, speech: _Speech, timestamp: int) -> float:
        """When it was said: the wall-clock arrival at the bot of the frame at ``timestamp``."""
        arrived = None
        for frame_timestamp, at in speech.arrivals:
            if _after(timestamp, frame_timestamp):
                arrived = at
        return arrived + self.loop_to_wall if arrived is not None else time.time()

    def _write(self, user_id: str, chunks: list[PcmChunk], speech: _Speech) -> None:
        if not chunks:
            return
        pcm = np.concatenate([c.pcm for c in chunks]).reshape(-1)
        said = speech.said_at
        guild = self.guild_of.get(user_id, "unknown")
        path = self.out / guild / user_id / f"{int(said * 1000)}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(RATE)
            wav.writeframes(pcm.astype("<i2").tobytes())
        text = transcribe(path, pcm)
        line = {
            "guild_id": guild,
            "user_id": user_id,
            "said_at": round(said, 3),
            "seconds": round(len(pcm) / RATE, 2),
            "wav": str(path),
            "text": text,
        }
        print(json.dumps(line), flush=True)


def _after(timestamp: int, than: int) -> bool:
    """RTP timestamp order across the 32-bit wrap."""
    return (timestamp - than) % 2**32 < 2**31


async def main(args: argparse.Namespace) -> int:
    """Consume until SIGTERM or SIGINT, then write what is open."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(args.nats, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    js = nc.jetstream()
    guild_of: dict[str, str] = {}
    cutter = UtteranceCutter(Path(args.out), guild_of)

    def remember(packet: VoicePacket) -> None:
        if packet.user_id is not None:
            guild_of[packet.user_id] = packet.guild_id

    # The consumer group "transcriber": one durable consumer per partition.
    frames = vnats.packets(
        js, vnats.partition_subjects(args.partition), durable=f"transcriber-{args.partition}"
    ).pipe(ops.do_action(remember), vnats.to_frames(), ops.do_action(cutter.on_frame))
    pcm = frames.pipe(vops.decode_opus(), vops.to_mono(), vops.resample(RATE), ops.share())
    subscriptions = [
        pcm.subscribe(cutter.on_chunk),  # first: a chunk is in before its event
        pcm.pipe(vops.voice_activity()).subscribe(cutter.on_activity),
    ]
    print(json.dumps({"worker": args.partition, "subscribed": True}), flush=True)
    await stop.wait()
    for subscription in subscriptions:
        subscription.dispose()
    cutter.flush()
    await nc.close()
    return 0


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats", required=True, help="NATS URL")
    parser.add_argument("--partition", type=int, required=True, help="the partition to consume")
    parser.add_argument("--out", default="out/many_guilds", help="where the WAVs go")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
