"""``python -m rxvoice demo``: a call to watch, end to end and offline (``make demo``).

It starts the sandbox (a local Discord) with simulated people talking in a
DAVE call: speech-like voices taking turns and sometimes talking over each
other, each at their own pitch. It joins with an rxvoice
:class:`~rxvoice.Connection` through the main gateway and records the call as
``python -m rxvoice record`` does, with the same live view. A third of the way
in someone joins, two thirds in someone leaves: each is a DAVE epoch change.

At the end it prints a summary and leaves in ``--out`` (by default a new
folder, ``out/demo/DATE-TIME``) one WAV per speaker on the call's timeline
(named by speaker: ``Ada-<id>.wav``), ``mix.wav`` and ``timeline.png``; then it
checks each speaker's file by the pitch of their voice. Files already in
``--out`` are never replaced or deleted (new names get ``-2``, ...). Ctrl-C
stops it early, with the files finished.

Exit codes: 0 every speaker who spoke was heard in their own file at their
own pitch; 1 not (or it could not run: libopus missing); 2 bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rxvoice.record import (
    RecordedFile,
    Recording,
    add_verbose,
    configure_logging,
    install_stop_signals,
    output_folder,
    print_files,
    run_until,
)

__all__ = ["MAX_SPEAKERS", "NAMES", "add_arguments", "run"]

NAMES = ("Ada", "Ben", "Cleo", "Dev", "Eve", "Finn", "Gus", "Hana")
"""Speaker names, in join order (the last one joins midway)."""

MAX_SPEAKERS = len(NAMES) - 1
"""The sandbox's speech voices are eight distinct pitches: seven speakers, plus one who joins."""

PITCH_TOLERANCE = 0.06
"""How far (relative) a file's pitch may be from its speaker's voice."""


def _int_between(low: int, high: int, why: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}{why}, got {value}")
        return value

    return parse


def _float_between(low: float, high: float, *, open_low: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        ok = (low < value if open_low else low <= value) and value <= high
        if not ok or not math.isfinite(value):
            if open_low:
                raise argparse.ArgumentTypeError(
                    f"must be more than {low:g} and at most {high:g}, got {text}"
                )
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``demo`` subcommand's options."""
    parser.add_argument(
        "--speakers",
        type=_int_between(1, MAX_SPEAKERS, " (the sandbox has 8 distinct voices)"),
        default=3,
        help=f"people in the call at the start, 1 to {MAX_SPEAKERS} (default 3)",
    )
    parser.add_argument(
        "--seconds",
        type=_float_between(0.0, 20.0, open_low=True),
        help="how long to listen, up to 20 (default: 10, longer for more speakers)",
    )
    parser.add_argument(
        "--out",
        type=output_folder,
        help="where the files go (default: out/demo/DATE-TIME, a new folder per run)",
    )
    parser.add_argument("--no-dave", action="store_true", help="transport encryption only")
    parser.add_argument(
        "--loss",
        type=_float_between(0.0, 100.0),
        default=0.0,
        metavar="PCT",
        help="packet loss in percent, 0 to 100",
    )
    add_verbose(parser)


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0 when every speaker who spoke was heard right."""
    from rxvoice.audio.opus import require_opus

    require_opus()
    configure_logging(args.verbose)
    began = time.monotonic()
    seconds = args.seconds or max(10.0, 2.2 * (args.speakers + 1))
    args.out = args.out or Path("out/demo") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    files, voices = asyncio.run(_demo(args, seconds))
    print_files(files, args.out)
    results = [_check(name, pitch, files) for name, pitch in voices.items()]
    for line in results:
        print(f"  {line.text}")
    mix = next((f for f in files if f.is_mix), None)
    if mix is not None:
        print(f"  listen: aplay {mix.path}   (or open the WAV files in any audio editor)")
    print(f"  done in {time.monotonic() - began:.1f} s")
    heard = [r for r in results if r.spoke]
    return 0 if heard and all(r.ok for r in heard) and mix is not None else 1


@dataclass(frozen=True, slots=True)
class _Check:
    spoke: bool
    ok: bool
    text: str


def _check(name: str, pitch: float, files: list[RecordedFile]) -> _Check:
    from rxvoice.audio.dsp import fundamental_frequency

    match = next((f for f in files if f.path.stem.startswith(f"{name}-")), None)
    if match is None:
        return _Check(False, False, f"[  - ] {name}: no file (did not get a turn to speak)")
    with wave.open(str(match.path)) as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, channels)
    heard = fundamental_frequency(pcm, rate)
    if heard is None:
        return _Check(False, False, f"[  - ] {name}: silent in {match.path.name}")
    ok = abs(heard - pitch) <= PITCH_TOLERANCE * pitch
    mark = " ok " if ok else "BAD "
    return _Check(
        True,
        ok,
        f"[{mark}] {name}: voice at {pitch:.0f} Hz, heard at {heard:.0f} Hz in {match.path.name}",
    )


async def _demo(
    args: argparse.Namespace, seconds: float
) -> tuple[list[RecordedFile], dict[str, float]]:
    from rxvoice.connection import Connection
    from rxvoice.operators._timeline import open_new
    from rxvoice.shard import GatewayShard
    from rxvoice.testing.sandbox import Faults, Sandbox
    from rxvoice.view import LiveView, plot_timeline

    out: Path = args.out
    stop = asyncio.Event()
    restore = install_stop_signals(stop)
    faults = Faults(loss=args.loss / 100.0, seed=1) if args.loss else None
    print(
        f"rxvoice demo: a local Discord with {args.speakers} "
        f"{'person' if args.speakers == 1 else 'people'} talking, DAVE "
        f"{'off' if args.no_dave else 'on'}"
        + (f", {args.loss:g}% packet loss" if args.loss else "")
        + f"; listening for {seconds:g} s; files go to {out}/",
        flush=True,
    )
    try:
        async with Sandbox(
            speakers=args.speakers, voices="speech", dave=not args.no_dave, faults=faults
        ) as sb:
            names = {s.user_id: NAMES[i] for i, s in enumerate(sb.speakers)}
            voices = {NAMES[i]: s.frequency for i, s in enumerate(sb.speakers)}
            shard = GatewayShard(sb.bot_token, url=sb.gateway_url, ssl=sb.client_ssl())
            await shard.start()
            conn = Connection(
                guild_id=sb.guild_id, channel_id=sb.channel_id, shard=shard, ssl=sb.client_ssl()
            )
            names[sb.bot_user_id] = "demo bot"
            recording = Recording(conn, out, names=names)
            try:
                await conn.connect()
                monitor = recording.start()
                async with LiveView(monitor):
                    await run_until(stop, seconds * 0.35, recording.done)
                    if not (stop.is_set() or recording.done.done()):
                        newcomer = await sb.add_speaker()
                        name = NAMES[len(voices)]
                        recording.name(newcomer.user_id, name)
                        voices[name] = newcomer.frequency
                        await run_until(stop, seconds * 0.30, recording.done)
                    if not (stop.is_set() or recording.done.done()) and len(sb.speakers) > 1:
                        await sb.remove_speaker(sb.speakers[0])
                        await run_until(stop, seconds * 0.35, recording.done)
                files = await recording.finish()
            finally:
                await conn.close()
                await shard.close()
        with open_new(out, "timeline", ".png") as png:
            plot_timeline(monitor, png, title="rxvoice demo: a DAVE call")
        print(f"  timeline: {png.name}")
        packets, lost, concealed, recovered = monitor.totals()
        print(
            f"  heard {packets} packets: {lost} lost, {concealed} concealed, "
            f"{recovered} recovered by FEC; DAVE epochs seen: "
            + (", ".join(str(e.epoch) for e in monitor.epochs) or "none")
        )
        return files, voices
    finally:
        restore()
