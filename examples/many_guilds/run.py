"""Run the many-guilds layout end to end on one machine, against local Discords.

Starts a NATS server (JetStream, a partitioned ``VOICE`` stream), ``--guilds``
sandboxes (local Discords, one guild each, with two simulated speakers), ``--bots``
bot processes that split the shards between them, and ``--workers`` worker
processes of the "transcriber" group. After ``--seconds`` of talk it stops the
bots, waits until the workers have consumed everything, stops them and checks
that every speaker has utterance WAVs at their own pitch. Exit 0 when they all do.

Run: ``.venv/bin/python examples/many_guilds/run.py`` (see README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import numpy as np

from rxvoice import nats as vnats
from rxvoice.nats.server import LocalNatsServer
from rxvoice.testing.packets import dominant_frequency
from rxvoice.testing.sandbox import Sandbox

HERE = Path(__file__).parent
SHARDS_PER_BOT = 2
# Guild g gets the id of a guild on shard g (Discord: shard = (guild_id >> 22) % count).
EPOCH_MS = 1_420_070_400_000


def guild_id_on_shard(shard: int) -> str:
    """A guild id that Discord would put on ``shard`` (of a power-of-two count)."""
    return str((EPOCH_MS + shard) << 22)


class Child:
    """A child process whose stdout lines are echoed with a prefix and kept."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self._new_line = asyncio.Event()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, name: str, *args: str) -> Child:
        """Run ``python *args``."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=asyncio.subprocess.PIPE
        )
        return cls(name, process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            text = line.decode().strip()
            print(f"  [{self.name}] {text}", flush=True)
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(text))
                self._new_line.set()

    async def says(self, key: str, timeout: float = 60.0) -> None:
        """Wait for a JSON line with ``key``."""
        async with asyncio.timeout(timeout):
            while not any(key in line for line in self.lines):
                if self.process.returncode is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
                self._new_line.clear()
                await self._new_line.wait()

    async def stop(self) -> int:
        """SIGTERM, then its exit code."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await self.process.wait()
        await self.reader
        return code


@contextlib.asynccontextmanager
async def sandboxes(count: int) -> AsyncIterator[list[Sandbox]]:
    """``count`` local Discords, one guild each (guild g on shard g), two speakers each."""
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for g in range(count):
            sandbox = Sandbox(speakers=2, guild_id=guild_id_on_shard(g))
            started.append(await stack.enter_async_context(sandbox))
        yield started


async def caught_up(js: Any, durables: list[str], timeout: float) -> None:
    """Wait until every durable consumer has acknowledged all it was given."""
    async with asyncio.timeout(timeout):
        while True:
            infos = []
            for durable in durables:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    infos.append(await js.consumer_info(vnats.STREAM, durable))
            if len(infos) == len(durables) and all(
                i.num_pending == 0 and i.num_ack_pending == 0 for i in infos
            ):
                return
            await asyncio.sleep(0.1)  # polling the broker's counters, for a demo


def pitch_of(path: Path) -> tuple[float, float]:
    """(dominant frequency, seconds) of a WAV file."""
    with wave.open(str(path)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), np.int16)
        return dominant_frequency(pcm, wav.getframerate()), len(pcm) / wav.getframerate()


async def run(args: argparse.Namespace) -> tuple[dict[str, float], list[dict[str, Any]], bool]:
    """Run everything.

    Returns:
        Each speaker's tone, the utterances the workers wrote (their JSON lines),
        and whether every process exited cleanly.
    """
    out = Path(args.out)
    shard_count = args.bots * SHARDS_PER_BOT
    work = Path(tempfile.mkdtemp(prefix="rxvoice-many-guilds-"))
    async with (
        LocalNatsServer(store_dir=work / "jetstream") as server,
        sandboxes(args.guilds) as guilds,
    ):
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        # Each user's audio in one of --workers partitions: worker k consumes partition k.
        await vnats.ensure_stream(js, vnats.stream_config(partitions=args.workers, max_age=600))
        config = work / "guilds.json"
        config.write_text(
            json.dumps(
                [
                    {
                        "gateway_url": sb.gateway_url,
                        "bot_token": sb.bot_token,
                        "guild_id": sb.guild_id,
                        "channel_id": sb.channel_id,
                        "ca_file": sb.ca_file,
                    }
                    for sb in guilds
                ]
            )
        )
        tones = {s.user_id: s.frequency for sb in guilds for s in sb.speakers}
        print(
            f"NATS at {server.url}; {args.guilds} guilds, {len(tones)} speakers, "
            f"{args.bots} bots x {SHARDS_PER_BOT} shards, {args.workers} workers"
        )
        children: list[Child] = []
        try:
            workers = [
                await Child.start(
                    f"worker {k}",
                    str(HERE / "worker.py"),
                    f"--nats={server.url}",
                    f"--partition={k}",
                    f"--out={out}",
                )
                for k in range(args.workers)
            ]
            children += workers
            bots = [
                await Child.start(
                    f"bot {b}",
                    str(HERE / "bot.py"),
                    f"--nats={server.url}",
                    # Shards round-robin over the bot processes: bot b runs b, b+N, ...
                    f"--shards={','.join(str(s) for s in range(b, shard_count, args.bots))}",
                    f"--shard-count={shard_count}",
                    f"--sandbox={config}",
                    f"--name=bot{b}",
                )
                for b in range(args.bots)
            ]
            children += bots
            for child in (*bots, *workers):
                await child.says("guilds" if child in bots else "subscribed")
            await asyncio.sleep(args.seconds)  # the length of the demo: people talk
            codes = [await bot.stop() for bot in bots]  # each drains its publishers first
            await caught_up(js, [f"transcriber-{k}" for k in range(args.workers)], 60.0)
            codes += [await worker.stop() for worker in workers]
            await nc.close()
        finally:
            for child in children:  # after a failure: leave nothing running
                if child.process.returncode is None:
                    child.process.kill()
                    await child.process.wait()

    shutil.rmtree(work, ignore_errors=True)
    written = [line for worker in workers for line in worker.lines if "wav" in line]
    return tones, written, not any(codes)


def check(out: Path, tones: dict[str, float], written: list[dict[str, Any]]) -> bool:
    """Print each speaker's utterances; whether each has some at its own pitch."""
    print("\nutterances per speaker (16 kHz mono WAVs, ready for speech-to-text):")
    ok = not any("error" in line for line in written)
    for user_id, tone in tones.items():
        files = [Path(line["wav"]) for line in written if line["user_id"] == user_id]
        heard = [pitch_of(f) for f in files]
        longest = max(heard, key=lambda h: h[1], default=(0.0, 0.0))
        good = bool(files) and abs(longest[0] - tone) <= 5.0
        ok = ok and good
        print(
            f"  [{'ok ' if good else 'BAD'}] user {user_id}: sang {tone:g} Hz, "
            f"{len(files)} utterances, longest {longest[1]:.2f} s at {longest[0]:.0f} Hz"
        )
    print(f"  files under {out}/<guild>/<user>/")
    return ok


def main() -> int:
    """Parse the options, run, check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guilds", type=int, default=2, help="local Discords (one guild each)")
    parser.add_argument("--bots", type=int, default=2, help="bot processes")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--seconds", type=float, default=6.0, help="how long they talk")
    parser.add_argument("--out", default="out/many_guilds", help="where the WAVs go")
    args = parser.parse_args()
    if min(args.guilds, args.bots, args.workers) < 1 or args.seconds <= 0:
        parser.error("--guilds, --bots, --workers and --seconds must be positive")
    tones, written, clean = asyncio.run(run(args))
    return 0 if check(Path(args.out), tones, written) and clean else 1


if __name__ == "__main__":
    sys.exit(main())
