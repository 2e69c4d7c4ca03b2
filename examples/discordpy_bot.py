"""A discord.py bot that records a voice channel and transcribes who said what.

Commands (in any text channel the bot can read):

- ``!join``: the bot joins your voice channel, records one WAV file per user into
  ``recordings/<channel>/``, all on the call's timeline (so they line up), and
  hands every utterance (``rxvoice.operators.utterances()``: 16 kHz mono int16
  PCM) to :func:`transcribe`, then posts the text;
- ``!leave``: the bot leaves and says which files it wrote.

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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import discord
import numpy as np
import yarl
from discord.ext import commands
from reactivex import operators as ops

from rxvoice import operators as vops
from rxvoice.discordpy import RxVoiceClient
from rxvoice.events import Utterance


def transcribe(pcm: np.ndarray, sample_rate: int) -> str:
    """Your speech-to-text goes here (it runs in a worker thread). This one describes the audio."""
    level = 20 * np.log10(max(float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))), 1.0) / 32768)
    return f"({len(pcm) / sample_rate:.1f} s of speech at {level:.0f} dBFS)"


def record(
    vc: RxVoiceClient,
    out_dir: Path,
    on_text: Callable[[Utterance, str], Awaitable[None]],
    stt: Callable[[np.ndarray, int], str] = transcribe,
) -> asyncio.Future[list[Path]]:
    """Record the call into ``out_dir`` and pass each utterance's text to ``on_text``.

    One WAV per user on the call's timeline (all of the recording's length, named
    after the members); each utterance, as 16 kHz mono int16 samples, goes to
    ``stt`` in a worker thread. Everything stops when the voice client ends
    (``disconnect()``, a kick).

    Returns:
        The paths of the WAV files, once the voice client has ended.
    """
    loop = asyncio.get_running_loop()
    pcm = vc.connection.on_audio_frame.pipe(vops.decode_opus(), ops.share())

    def name(user_id: str) -> str | None:
        member = vc.guild.get_member(int(user_id))
        return member.display_name if member is not None else None

    files = pcm.pipe(
        vops.write_timeline(out_dir, start=loop.time(), labels=name), ops.to_list()
    ).pipe(ops.to_future())
    running: set[asyncio.Task[None]] = set()

    async def handle(utterance: Utterance) -> None:
        text = await asyncio.to_thread(stt, utterance.pcm[:, 0], utterance.sample_rate)
        await on_text(utterance, text)

    def on_utterance(utterance: Utterance) -> None:
        task = loop.create_task(handle(utterance))
        running.add(task)  # keep a reference until it is done
        task.add_done_callback(running.discard)

    pcm.pipe(vops.utterances()).subscribe(on_utterance)
    return files


def make_bot(**client_options: Any) -> commands.Bot:
    """The bot and its two commands; ``client_options`` go to ``commands.Bot``."""
    intents = discord.Intents.default()
    intents.message_content = True
    bot = commands.Bot(command_prefix="!", intents=intents, **client_options)
    recordings: dict[int, asyncio.Future[list[Path]]] = {}  # by guild

    @bot.command()
    async def join(ctx: commands.Context[commands.Bot]) -> None:
        voice = getattr(ctx.author, "voice", None)
        if voice is None or voice.channel is None:
            await ctx.send("Join a voice channel first.")
            return
        vc = await voice.channel.connect(cls=RxVoiceClient)

        async def post(utterance: Utterance, text: str) -> None:
            await ctx.send(f"<@{utterance.user_id}>: {text}")

        recordings[vc.guild.id] = record(vc, Path("recordings") / str(voice.channel.id), post)
        await ctx.send(f"Recording {voice.channel.mention}.")

    @bot.command()
    async def leave(ctx: commands.Context[commands.Bot]) -> None:
        if ctx.voice_client is None or ctx.guild is None:
            return
        await ctx.voice_client.disconnect(force=False)
        if (files := recordings.pop(ctx.guild.id, None)) is not None:
            await ctx.send("Wrote " + ", ".join(path.name for path in await files))

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
        began = asyncio.get_running_loop().time()
        recordings: list[asyncio.Future[list[Path]]] = []

        async def post(utterance: Utterance, text: str) -> None:
            start, end = utterance.start - began, utterance.end - began
            print(f"[{start:5.2f}-{end:5.2f} s] {utterance.user_id}: {text}")
            texts.append(text)
            if len(texts) == utterance_count:
                done.set()

        @bot.event
        async def on_guild_available(guild: discord.Guild) -> None:
            channel = guild.get_channel(int(sb.channel_id))
            assert isinstance(channel, discord.VoiceChannel)
            vc = await channel.connect(cls=RxVoiceClient.with_options(ssl=trust))
            recordings.append(record(vc, out_dir, post))

        async with bot:
            runner = asyncio.create_task(bot.start(sb.bot_token))
            await done.wait()
            for vc in bot.voice_clients:
                await vc.disconnect(force=False)
            for files in recordings:
                print("wrote", ", ".join(str(path) for path in await files))
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
