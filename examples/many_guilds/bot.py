"""A bot process: owns some gateway shards and publishes its guilds' voice to NATS.

Discord assigns each guild to one shard, ``shard_id = (guild_id >> 22) % shard_count``;
a bot too big for one process runs several, each with its own ``shard_ids``. Each
process holds the voice connections of its shards' guilds (the voice state lives
on the shard that owns the guild) and publishes what they receive to NATS, so the
heavy work happens in worker processes elsewhere.

Two ways to run it:

- against the sandbox (what ``run.py`` does): ``--sandbox guilds.json``, a list of
  local Discords, one guild each, joined with rxvoice's ``GatewayShard`` and
  ``Connection``;
- against real Discord with discord.py: ``--discord --channel ID ...`` and the token
  in ``DISCORD_TOKEN``; an ``AutoShardedClient`` runs this process's shards and joins
  the listed voice channels of its guilds through ``rxvoice.discordpy.RxVoiceClient``.

On SIGTERM or SIGINT it drains what is in flight, leaves, prints one JSON line of
counts and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import nats

from rxvoice import nats as vnats
from rxvoice.connection import Connection
from rxvoice.shard import GatewayShard


def shard_of(guild_id: str, shard_count: int) -> int:
    """The shard Discord puts a guild on."""
    return (int(guild_id) >> 22) % shard_count


async def run_sandbox(args: argparse.Namespace, js: Any, stop: asyncio.Event) -> dict[str, Any]:
    """Join the sandbox guilds on this process's shards; publish until ``stop``."""
    mine = [g for g in args.guilds if shard_of(g["guild_id"], args.shard_count) in args.shards]
    joined: list[tuple[GatewayShard, Connection, vnats.ConnectionPublisher]] = []
    for guild in mine:
        context = ssl.create_default_context(cafile=guild["ca_file"])
        shard = GatewayShard(guild["bot_token"], url=guild["gateway_url"], ssl=context)
        await shard.start()
        conn = Connection(
            guild_id=guild["guild_id"], channel_id=guild["channel_id"], shard=shard, ssl=context
        )
        # Before connect(): the handshake's events (session, DAVE) are published too.
        published = vnats.publish_connection(js, conn)
        await conn.connect()
        joined.append((shard, conn, published))
    print(json.dumps({"bot": args.name, "shards": args.shards, "guilds": len(joined)}), flush=True)
    await stop.wait()
    counts = {}
    for shard, conn, published in joined:
        await published.aclose()  # drains what is in flight first
        counts[conn.guild_id] = {
            "audio": _counts(published.audio.stats),
            "control": _counts(published.control.stats),
        }
        await conn.close()
        await shard.close()
    return counts


async def run_discord(args: argparse.Namespace, js: Any, stop: asyncio.Event) -> dict[str, Any]:
    """The same with discord.py on real Discord: this process runs ``args.shards``."""
    import discord

    from rxvoice.discordpy import RxVoiceClient

    intents = discord.Intents.default()
    intents.voice_states = True
    client = discord.AutoShardedClient(
        intents=intents, shard_ids=args.shards, shard_count=args.shard_count
    )
    publishers: dict[int, vnats.ConnectionPublisher] = {}

    @client.event
    async def on_ready() -> None:
        for channel_id in args.channel:
            channel = client.get_channel(channel_id)
            if not isinstance(channel, discord.VoiceChannel):
                continue  # not a voice channel, or its guild is on another process's shard
            vc = await channel.connect(cls=RxVoiceClient)
            publishers[channel.guild.id] = vnats.publish_connection(js, vc.connection)

    token = os.environ.get("DISCORD_TOKEN")
    if not token:
        raise SystemExit("DISCORD_TOKEN is not set")
    runner = asyncio.create_task(client.start(token))
    await stop.wait()
    counts = {}
    for guild_id, published in publishers.items():
        await published.aclose()
        counts[str(guild_id)] = {"audio": _counts(published.audio.stats)}
    await client.close()
    await runner
    return counts


def _counts(stats: vnats.PublishStats) -> dict[str, int]:
    return {
        "offered": stats.offered,
        "acked": stats.acked,
        "dropped": stats.dropped,
        "errors": stats.errors,
        "timeouts": stats.timeouts,
    }


async def main(args: argparse.Namespace) -> int:
    """Publish until SIGTERM or SIGINT, then print the counts."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Reconnect for ever: a broker restart must not end the bot.
    nc = await nats.connect(args.nats, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    js = nc.jetstream()
    run = run_discord if args.discord else run_sandbox
    counts = await run(args, js, stop)
    print(json.dumps({"bot": args.name, "published": counts}), flush=True)
    await nc.close()
    return 0


def parse_args() -> argparse.Namespace:
    """The command line; ``args.guilds`` is the sandbox list, read here."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats", required=True, help="NATS URL, e.g. nats://127.0.0.1:4222")
    parser.add_argument("--shards", required=True, help="this process's shard ids, e.g. 0,2")
    parser.add_argument("--shard-count", type=int, required=True, help="shards of the bot")
    parser.add_argument("--name", default="bot", help="a name for the logs")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--sandbox", help="guilds.json written by run.py")
    mode.add_argument("--discord", action="store_true", help="real Discord (DISCORD_TOKEN)")
    parser.add_argument(
        "--channel", type=int, action="append", default=[], help="voice channel to join"
    )
    args = parser.parse_args()
    try:
        args.shards = [int(s) for s in args.shards.split(",")]
    except ValueError:
        parser.error("--shards takes comma-separated integers")
    if args.shard_count < 1 or not all(0 <= s < args.shard_count for s in args.shards):
        parser.error("every shard id must be in range(--shard-count)")
    args.guilds = json.loads(Path(args.sandbox).read_text()) if args.sandbox else []
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
