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
import dataclasses
import json
import logging
import signal
import sys
from typing import TYPE_CHECKING, Any

from rxvoice.errors import InvalidArgument
from rxvoice.testing.sandbox.faults import Faults
from rxvoice.testing.sandbox.options import SandboxOptions

if TYPE_CHECKING:
    from rxvoice.testing.sandbox import Sandbox

__all__ = ["add_arguments", "describe", "options_from", "run"]

_FLAGGED = tuple(f for f in dataclasses.fields(SandboxOptions) if "flag" in f.metadata)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``sandbox`` subcommand's options: the flagged :class:`SandboxOptions` fields."""
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in _FLAGGED:
        settings = dict(f.metadata)
        flag, group = settings.pop("flag"), settings.pop("group", None)
        if isinstance(f.default, bool):
            settings["action"] = "store_false" if flag.startswith("--no-") else "store_true"
        else:
            settings["type"] = type(f.default)
        target = parser if group is None else groups.get(group)
        if target is None:
            target = groups[group] = parser.add_mutually_exclusive_group()
        target.add_argument(flag, dest=f.name, default=f.default, **settings)
    parser.add_argument(
        "--loss", type=float, default=0.0, metavar="PCT", help="relay packet loss in percent"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault injector")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO on stderr")


def options_from(args: argparse.Namespace) -> SandboxOptions:
    """The :class:`SandboxOptions` that parsed command-line ``args`` ask for.

    Raises:
        InvalidArgument: An option is out of range.
    """
    if not 0.0 <= args.loss <= 100.0:
        raise InvalidArgument("--loss must be between 0 and 100")
    flagged = {f.name: getattr(args, f.name) for f in _FLAGGED}
    return SandboxOptions(**flagged, faults=Faults(loss=args.loss / 100.0, seed=args.seed))


def run(args: argparse.Namespace) -> int:
    """Run the sandbox subcommand; returns the exit code."""
    try:
        options = options_from(args)
    except InvalidArgument as exc:
        print(f"rxvoice sandbox: error: {exc}", file=sys.stderr)
        return 2
    if options.speakers:
        from rxvoice.audio.opus import require_opus

        require_opus()  # speakers encode Opus: fail now, in one line, not in their tasks
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(_serve(options))


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
        "dave": sandbox.options.dave,
        "require_dave": sandbox.options.require_dave,
    }


async def _serve(options: SandboxOptions) -> int:
    from rxvoice.testing.sandbox import Sandbox

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Sandbox(options) as sandbox:
        line = describe(sandbox)
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        await stop.wait()
    return 0
