"""Listen to a voice channel with rxvoice alone (no Discord library): who is there, who speaks.

On Discord (the bot must be in the guild, with View Channel and Connect there):

    DISCORD_TOKEN=... python examples/standalone.py --guild 1234 --channel 5678 --seconds 30

Offline, against a sandbox this script starts itself (two simulated speakers, DAVE on):

    python examples/standalone.py --sandbox

Or against a sandbox (or any local Discord) started elsewhere with
``python -m rxvoice sandbox --speakers 2``: pass its JSON line's values with
``--gateway-url``, ``--ca-file``, ``--guild``, ``--channel`` and its
``bot_token`` in ``DISCORD_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence

import rxvoice
from rxvoice.errors import ConnectionClosed, UsageError
from rxvoice.standalone import Joining
from rxvoice.testing.sandbox import Sandbox


async def listen(joining: Joining, seconds: float) -> collections.Counter[str]:
    """Join, print the call's events for ``seconds``, leave; return audio frames per user."""
    frames: collections.Counter[str] = collections.Counter()
    async with joining as conn:  # left and closed (voice and gateway) at the end
        # join=False: subscribe first, so the users already in the call are seen too.
        conn.on_client_connect.subscribe(lambda e: print(f"in the call: {e.user_id}"))
        conn.on_client_disconnect.subscribe(lambda e: print(f"left: {e.user_id}"))
        conn.on_speaking.subscribe(lambda e: print(f"speaking: {e.user_id} ({e.flags!r})"))
        conn.on_dave_epoch_transition.subscribe(
            lambda t: print(f"DAVE epoch {t.epoch}, {len(t.members)} members")
        )
        conn.on_audio_frame.subscribe(lambda f: frames.update([f.user_id or "unknown"]))
        await conn.connect()
        print(f"connected as {conn.user_id}; listening for {seconds:g} s (Ctrl-C stops)")
        await asyncio.sleep(seconds)
    return frames


@contextlib.asynccontextmanager
async def local_discord(args: argparse.Namespace) -> AsyncIterator[Joining]:
    """What to join: a sandbox started here, or the gateway the arguments name."""
    if args.sandbox:
        async with Sandbox(speakers=2) as sb:
            yield rxvoice.connect(
                token=sb.bot_token,
                guild_id=sb.guild_id,
                channel_id=sb.channel_id,
                join=False,
                gateway_url=sb.gateway_url,
                ca_file=sb.ca_file,
            )
        return
    token = os.environ.get("DISCORD_TOKEN", "")
    extra = {"gateway_url": args.gateway_url} if args.gateway_url else {}
    yield rxvoice.connect(
        token=token,
        guild_id=args.guild,
        channel_id=args.channel,
        join=False,
        ca_file=args.ca_file,
        **extra,
    )


async def main(argv: Sequence[str] | None = None) -> int:
    """Run the example; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandbox", action="store_true", help="start a local sandbox and use it")
    parser.add_argument("--guild", help="the guild id")
    parser.add_argument("--channel", help="the voice channel id")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to listen")
    parser.add_argument("--gateway-url", help="a local main gateway instead of Discord's")
    parser.add_argument("--ca-file", help="certificates to trust for --gateway-url (PEM)")
    args = parser.parse_args(argv)
    if not args.sandbox:
        if not (args.guild and args.channel):
            parser.error("--guild and --channel are needed (or --sandbox)")
        if not os.environ.get("DISCORD_TOKEN"):
            parser.error("set DISCORD_TOKEN to the bot token")
    try:
        async with local_discord(args) as joining:
            frames = await listen(joining, args.seconds)
    except UsageError as exc:  # e.g. an id that is not a snowflake
        parser.error(str(exc))
    except (ConnectionClosed, TimeoutError) as exc:  # a refused token, intents, ...
        print(f"standalone.py: {exc or 'timed out'}", file=sys.stderr)
        return 1
    for user_id, count in frames.most_common():
        print(f"{user_id}: {count} audio frames")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main()))
