"""A discord.py bot that records a voice channel and transcribes who said what.

Commands (in any text channel the bot can read):

- ``!join``: the bot joins your voice channel, writes one WAV file per user into
  ``recordings/`` and hands every utterance, as 16 kHz mono int16 PCM, to
  :func:`transcribe`, then posts the text;
- ``!leave``: the bot leaves; the WAV files are closed.

Run it on Discord (enable the Message Content intent of the bot in the developer
portal, for the ``!`` commands)::

    pip install 'rxvoice[discordpy]'
    DISCORD_TOKEN=... python examples/discordpy_bot.py

Or without Discord, against rxvoice's local sandbox and its simulated speakers
(no token; the bot joins by itself since nobody can type a command there)::

    python examples/discordpy_bot.py --sandbox

:func:`transcribe` here only describes the audio: put your speech-to-text in it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import discord
import numpy as np
import reactivex
import yarl
from discord.ext import commands
from reactivex import Observable
from reactivex import operators as ops

from rxvoice import Connection, PcmChunk, VoiceActivityChange
from rxvoice import operators as vops
from rxvoice.discordpy import RxVoiceClient

RATE = 16_000


@dataclass(frozen=True)
class Utterance:
    """One stretch of a user's speech: 16 kHz mono int16 samples."""

    user_id: str
    pcm: np.ndarray

    @property
    def seconds(self) -> float:
        """Its length."""
        return len(self.pcm) / RATE


class _Cutter:
    """Keeps each user's recent 16 kHz audio and cuts it at voice-activity changes."""

    def __init__(self, pre_roll: int, max_chunks: int) -> None:
        # Speech is declared at its second loud frame: keep the frames before it.
        self.recent: dict[str, deque[np.ndarray]] = defaultdict(lambda: deque(maxlen=pre_roll))
        self.talking: dict[str, list[np.ndarray]] = {}
        self.max_chunks = max_chunks

    def feed(self, item: PcmChunk | VoiceActivityChange) -> list[Utterance]:
        """Take a 16 kHz chunk or a voice-activity change; return the utterance it ends."""
        user = item.user_id
        if user is None:
            return []
        if isinstance(item, VoiceActivityChange):
            if item.speaking:
                self.talking[user] = list(self.recent.pop(user, ()))
                return []
            return self._cut(user, self.talking.pop(user, []))
        parts = self.talking.get(user)
        if parts is None:
            self.recent[user].append(item.pcm[:, 0])
            return []
        parts.append(item.pcm[:, 0])
        if len(parts) >= self.max_chunks:  # bounded: a long monologue comes in pieces
            self.talking[user] = []
            return self._cut(user, parts)
        return []

    def _cut(self, user: str, parts: list[np.ndarray]) -> list[Utterance]:
        return [Utterance(user, np.concatenate(parts))] if parts else []


def utterances(
    conn: Connection, *, pre_roll: int = 10, max_seconds: float = 30.0
) -> Observable[Utterance]:
    """Each user's utterances, from voice activity, as 16 kHz mono PCM.

    Args:
        conn: The voice connection (``vc.connection``).
        pre_roll: 20 ms frames kept before speech is detected.
        max_seconds: Longer speech is cut into pieces of this length.
    """

    def build(_: Any) -> Observable[Utterance]:
        cutter = _Cutter(pre_roll, round(max_seconds * 50))
        pcm = conn.on_audio_frame.pipe(vops.decode_opus(), ops.share())
        # Subscribed first, so a frame's audio arrives before the change it causes.
        speech = pcm.pipe(vops.to_mono(), vops.resample(RATE))
        changes = pcm.pipe(vops.voice_activity())
        return reactivex.merge(speech, changes).pipe(ops.flat_map(cutter.feed))

    return reactivex.defer(build)


def transcribe(pcm: np.ndarray, sample_rate: int) -> str:
    """Your speech-to-text goes here (it runs in a worker thread). This one describes the audio."""
    level = 20 * np.log10(max(float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))), 1.0) / 32768)
    return f"({len(pcm) / sample_rate:.1f} s of speech at {level:.0f} dBFS)"


def record(
    vc: RxVoiceClient,
    out_dir: Path,
    on_text: Callable[[str, str], Awaitable[None]],
    stt: Callable[[np.ndarray, int], str] = transcribe,
) -> None:
    """Write one WAV per user into ``out_dir`` and pass each utterance's text to ``on_text``.

    Everything stops when the voice client ends (``disconnect()``, a kick).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    conn = vc.connection
    conn.on_audio_frame.pipe(
        vops.decode_opus(), vops.write_wav(str(out_dir / "{user_id}.wav"))
    ).subscribe(lambda path: print("wrote", path))
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[None]] = set()

    async def handle(utterance: Utterance) -> None:
        text = await asyncio.to_thread(stt, utterance.pcm, RATE)
        await on_text(utterance.user_id, text)

    def on_utterance(utterance: Utterance) -> None:
        task = loop.create_task(handle(utterance))
        running.add(task)  # keep a reference until it is done
        task.add_done_callback(running.discard)

    utterances(conn).subscribe(on_utterance)


def make_bot(**client_options: Any) -> commands.Bot:
    """The bot and its two commands; ``client_options`` go to ``commands.Bot``."""
    intents = discord.Intents.default()
    intents.message_content = True
    bot = commands.Bot(command_prefix="!", intents=intents, **client_options)

    @bot.command()
    async def join(ctx: commands.Context[commands.Bot]) -> None:
        voice = getattr(ctx.author, "voice", None)
        if voice is None or voice.channel is None:
            await ctx.send("Join a voice channel first.")
            return
        vc = await voice.channel.connect(cls=RxVoiceClient)

        async def post(user_id: str, text: str) -> None:
            await ctx.send(f"<@{user_id}>: {text}")

        record(vc, Path("recordings") / str(voice.channel.id), post)
        await ctx.send(f"Recording {voice.channel.mention}.")

    @bot.command()
    async def leave(ctx: commands.Context[commands.Bot]) -> None:
        if ctx.voice_client is not None:
            await ctx.voice_client.disconnect(force=False)

    return bot


async def run_in_sandbox(utterance_count: int, out_dir: Path) -> list[str]:
    """Join the sandbox's channel, print ``utterance_count`` transcripts, leave; return them."""
    from discord.gateway import DiscordWebSocket

    from rxvoice.testing.sandbox import Sandbox

    async with Sandbox(speakers=2) as sb:
        # The lines that point a stock discord.py client at the sandbox.
        discord.http.Route.BASE = sb.api_url
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(sb.gateway_url)
        trust = ssl.create_default_context(cafile=sb.ca_file)
        bot = make_bot(connector=aiohttp.TCPConnector(ssl=trust))
        texts: list[str] = []
        done = asyncio.Event()

        async def post(user_id: str, text: str) -> None:
            print(f"{user_id}: {text}")
            texts.append(text)
            if len(texts) == utterance_count:
                done.set()

        @bot.event
        async def on_guild_available(guild: discord.Guild) -> None:
            channel = guild.get_channel(int(sb.channel_id))
            assert isinstance(channel, discord.VoiceChannel)
            vc = await channel.connect(cls=RxVoiceClient.with_options(ssl=trust))
            record(vc, out_dir, post)

        async with bot:
            runner = asyncio.create_task(bot.start(sb.bot_token))
            await done.wait()
            for vc in bot.voice_clients:
                await vc.disconnect(force=False)
            await bot.close()
            await runner
        return texts


def main() -> int:
    """Run the bot on Discord (``DISCORD_TOKEN``) or in the sandbox (``--sandbox``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sandbox", action="store_true", help="run against the local sandbox")
    parser.add_argument("--utterances", type=int, default=4, help="sandbox: stop after this many")
    args = parser.parse_args()
    if args.sandbox:
        asyncio.run(run_in_sandbox(args.utterances, Path("recordings") / "sandbox"))
        return 0
    token = os.environ.get("DISCORD_TOKEN")
    if not token:
        print("set DISCORD_TOKEN (or try --sandbox)", file=sys.stderr)
        return 2
    make_bot().run(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
