"""``python -m rxvoice demo``: the main job, end to end and offline.

It starts the sandbox (a local Discord) with simulated speakers in a DAVE call,
joins it with an rxvoice :class:`~rxvoice.Connection` through the main
gateway, and runs one pipeline::

    on_audio_frame ─ decode_opus ─┬─ write_wav("{user_id}.wav")   one file per speaker
                                  ├─ mix ─ write_wav("mix.wav")    everyone, in time
                                  └─ levels                         the live meter

Then it checks each speaker's file for the tone that speaker sent and prints
where the files are, to listen to them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from reactivex import operators as ops

from rxvoice import operators as vops
from rxvoice.connection import Connection
from rxvoice.events import AudioLevel, DaveEpochTransition
from rxvoice.shard import GatewayShard

__all__ = ["add_arguments", "run"]

METER_WIDTH = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``demo`` subcommand's options."""
    parser.add_argument("--speakers", type=int, default=3, help="simulated speakers (default 3)")
    parser.add_argument("--seconds", type=float, default=6.0, help="how long to listen")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="where WAVs go")
    parser.add_argument("--no-dave", action="store_true", help="transport encryption only")
    parser.add_argument("--loss", type=float, default=0.0, metavar="PCT", help="packet loss")


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0 when every speaker was heard and recorded correctly."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.wav"):
        old.unlink()
    names, tones = asyncio.run(_demo(args))
    results = []
    for user_id, name in names.items():
        path = out / f"{user_id}.wav"
        heard, seconds = dominant_frequency(path) if path.exists() else (0.0, 0.0)
        results.append(_Heard(user_id, tones[user_id], heard, seconds, path))
        mark = "ok " if results[-1].ok else "BAD"
        print(
            f"  [{mark}] {name}: sent {tones[user_id]:g} Hz, heard {heard:.0f} Hz "
            f"in {seconds:.1f} s of audio -> {path}"
        )
    mix_path = out / "mix.wav"
    if mix_path.exists():
        print(f"  mix of everyone: {mix_path} ({dominant_frequency(mix_path)[1]:.1f} s)")
    print(f"  listen: aplay {mix_path}   (or open the WAV files in any player)")
    return 0 if results and all(r.ok for r in results) and mix_path.exists() else 1


@dataclass(frozen=True, slots=True)
class _Heard:
    user_id: str
    sent_hz: float
    heard_hz: float
    seconds: float
    path: Path

    @property
    def ok(self) -> bool:
        return abs(self.sent_hz - self.heard_hz) <= 5.0 and self.seconds > 0.5


def dominant_frequency(path: Path) -> tuple[float, float]:
    """Return (the strongest frequency in Hz, the duration in s) of a WAV file."""
    with wave.open(str(path)) as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    mono = pcm.reshape(-1, channels).mean(axis=1) if channels > 1 else pcm.astype(float)
    if len(mono) < rate // 10:
        return 0.0, len(mono) / rate
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum) * rate / len(mono)), len(mono) / rate


def _meter(levels: dict[str, float], names: dict[str, str]) -> str:
    cells = []
    for user_id, name in names.items():
        db = levels.get(user_id, -90.0)
        filled = int(max(0.0, min(1.0, (db + 60.0) / 60.0)) * 10)
        cells.append(f"{name} {'█' * filled}{'·' * (10 - filled)} {db:5.0f} dB")
    return "  ".join(cells)


async def _demo(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, float]]:
    from rxvoice.testing.sandbox import Faults, Sandbox

    out: Path = args.out
    faults = Faults(loss=args.loss / 100.0, seed=1) if args.loss else None
    print(
        f"rxvoice demo: a local Discord with {args.speakers} speakers, DAVE "
        f"{'off' if args.no_dave else 'on'}; listening for {args.seconds:g} s"
    )
    async with Sandbox(speakers=args.speakers, dave=not args.no_dave, faults=faults) as sb:
        names = {s.user_id: f"speaker{i + 1}" for i, s in enumerate(sb.speakers)}
        tones = {s.user_id: s.frequency for s in sb.speakers}
        for user_id, name in names.items():
            print(f"  {name} = user {user_id}, sings {tones[user_id]:g} Hz")
        shard = GatewayShard(sb.bot_token, url=sb.gateway_url, ssl=sb.client_ssl())
        await shard.start()
        conn = Connection(
            guild_id=sb.guild_id, channel_id=sb.channel_id, shard=shard, ssl=sb.client_ssl()
        )
        levels: dict[str, float] = {}
        written: list[Path] = []

        def on_transition(t: DaveEpochTransition) -> None:
            members = ", ".join(names.get(m, "bot") for m in t.members)
            print(f"\n  DAVE epoch {t.epoch}: [{members}] privacy code {t.privacy_code}")

        def on_level(level: AudioLevel) -> None:
            if level.user_id is not None:
                levels[level.user_id] = level.dbfs

        conn.on_dave_epoch_transition.subscribe(on_transition)
        pcm = conn.on_audio_frame.pipe(vops.decode_opus(), ops.share())
        pcm.pipe(vops.write_wav(out / "{user_id}.wav")).subscribe(written.append)
        pcm.pipe(vops.mix(), vops.write_wav(out / "mix.wav")).subscribe(written.append)
        pcm.pipe(vops.levels(floor=-90.0)).subscribe(on_level)

        await conn.connect()
        print(f"  connected: ssrc {conn.ssrc}, mode {conn.rtp.mode.value if conn.rtp else '?'}")
        loop = asyncio.get_running_loop()
        end = loop.time() + args.seconds
        live = sys.stdout.isatty()
        while loop.time() < end:
            await asyncio.sleep(0.25 if live else 1.0)
            if live:
                sys.stdout.write("\r  " + _meter(levels, names))
                sys.stdout.flush()
            else:
                print("  " + _meter(levels, names))
        print()
        stats = conn.stats
        await conn.close()  # completes the streams: the WAV files are finished
        await shard.close()

    print(
        f"  received {stats.packets_received} packets; {stats.dave_failures} not DAVE-decryptable "
        "(sent before we were in the group), "
        f"{stats.undecryptable_packets} not transport-decryptable"
    )
    return names, tones
