"""``python -m rxvoice sandbox``: run the sandbox until SIGINT or SIGTERM.

It prints exactly one JSON line on stdout, then serves::

    {"gateway_url": "wss://127.0.0.1:PORT/?v=10&encoding=json",
     "api_url": "https://127.0.0.1:PORT/api/v10",
     "bot_token": "...", "bot_user_id": "...", "guild_id": "...", "channel_id": "...",
     "voice": {"endpoint": "127.0.0.1:PORT", "token": "...", "url": "wss://127.0.0.1:PORT/?v=8"},
     "ca_file": "/tmp/rxvoice-sandbox-.../ca.pem", "speakers": ["..."],
     "dave": true, "require_dave": false}

``voice.token`` is accepted for any user id and session id, so a client that
speaks only the voice protocol can join with nothing but this line (trust
``ca_file``, e.g. with ``NODE_EXTRA_CA_CERTS``). ``api_url`` serves the REST
routes bot libraries call at start-up, so a stock discord.py or disnake
client logs in with ``bot_token`` (docs/sandbox.md). Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rxvoice.testing.sandbox import Sandbox

__all__ = ["add_arguments", "describe", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``sandbox`` subcommand's options."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help="main-gateway port; voice uses PORT+1 (TCP and UDP); 0 picks free ports",
    )
    parser.add_argument("--speakers", type=int, default=0, help="simulated speakers (default 0)")
    parser.add_argument(
        "--voices",
        choices=("tone", "speech"),
        default="tone",
        help="speakers sing a steady tone each (default), or talk in turns like people",
    )
    parser.add_argument(
        "--continuous",
        action="store_true",
        help="speakers talk without pauses (50 packets/s each) instead of in turns",
    )
    dave = parser.add_mutually_exclusive_group()
    dave.add_argument("--no-dave", action="store_true", help="offer no DAVE (transport only)")
    dave.add_argument(
        "--require-dave", action="store_true", help="close clients without DAVE with 4017"
    )
    parser.add_argument(
        "--loss", type=float, default=0.0, metavar="PCT", help="relay packet loss in percent"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault injector")
    parser.add_argument(
        "--resume-window",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a session whose WebSocket closed stays resumable (default 30)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO on stderr")


def run(args: argparse.Namespace) -> int:
    """Run the sandbox subcommand; returns the exit code."""
    if not 0.0 <= args.loss <= 100.0:
        print("--loss must be between 0 and 100", file=sys.stderr)
        return 2
    if args.resume_window < 0:
        print("--resume-window must not be negative", file=sys.stderr)
        return 2
    if args.speakers:
        from rxvoice.audio.opus import require_opus

        require_opus()  # speakers encode Opus: fail now, in one line, not in their tasks
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(_serve(args))


def describe(sandbox: Sandbox) -> dict[str, Any]:
    """What a client needs to join a started sandbox: the JSON line the CLI prints."""
    return {
        "gateway_url": sandbox.gateway_url,
        "api_url": sandbox.api_url,
        "bot_token": sandbox.bot_token,
        "bot_user_id": sandbox.bot_user_id,
        "guild_id": sandbox.guild_id,
        "channel_id": sandbox.channel_id,
        "voice": {
            "endpoint": sandbox.voice_endpoint,
            "token": sandbox.voice_token,
            "url": sandbox.voice_url,
        },
        "ca_file": sandbox.ca_file,
        "speakers": [s.user_id for s in sandbox.speakers],
        "dave": sandbox.dave_enabled,
        "require_dave": sandbox.require_dave,
    }


async def _serve(args: argparse.Namespace) -> int:
    from rxvoice.testing.sandbox import Faults, Sandbox

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sandbox = Sandbox(
        host=args.host,
        port=args.port,
        speakers=args.speakers,
        voices=args.voices,
        continuous_speech=args.continuous,
        dave=not args.no_dave,
        require_dave=args.require_dave,
        faults=Faults(loss=args.loss / 100.0, seed=args.seed),
        resume_window=args.resume_window,
    )
    async with sandbox:
        line = describe(sandbox)
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        await stop.wait()
    return 0
