"""The soak: one Connection in a long, busy, lossy call (``make soak``; not in ``make test``).

A sandbox runs in a child process (its speakers' memory and CPU are not the
client's); this process holds only the bot: a :class:`~rxvoice.GatewayShard`
and a :class:`~rxvoice.Connection` subscribed to ``on_audio_frame``. During the
run:

- ``--speakers`` simulated speakers talk (1 s on, 0.5 s off, all at once);
- the network to the bot loses ``--loss`` of the datagrams (the sandbox's fault
  injector, seeded);
- every ``--epoch-every`` seconds one more speaker joins or leaves again: a DAVE
  epoch change for everyone;
- at 40 % of the run the bot's voice WebSocket closes with 4015 (a resume), at
  60 % with 4006 (a new session: new SSRC, keys and DAVE group).

Every ``--sample-every`` seconds it prints the bot's RSS and what was received so
far; at the end, the accounting of every frame the sandbox relayed to the bot:

- lost by the network: what the fault injector dropped;
- not read: datagrams that reached the bot's old UDP socket after it closed at
  the new session (arrived - read);
- counted by the bot: every read packet is either emitted on ``on_audio_frame``
  or counted in ``conn.stats`` (DAVE failures, undecryptable, malformed,
  unmapped) or reported as a ``no_keys`` diagnostic (it came before the new
  session's keys); the counters are printed as the stats dataclasses hold
  them, the diagnostics by kind;
- unexplained: read - emitted - counted (must be 0).

It exits 1 if anything is unexplained or the RSS grew more than ``--max-growth``
MB after the warm-up (the first ``--warmup`` seconds). ``--json FILE`` also
writes the figures as JSON.

Example:
    python benchmarks/soak.py --minutes 10 --speakers 25
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import os
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

from rxvoice import Connection, GatewayShard
from rxvoice.events import AudioFrame, ConnectionState, Diagnostic, DiagnosticKind
from rxvoice.protocol.dave import DaveManager
from rxvoice.testing.sandbox import Faults, Sandbox

Pipe = multiprocessing.connection.Connection

# Receive counters that are frames the bot read and did not emit (see ReceiverStats),
# and diagnostics that stand for such frames without a counter of their own.
DROP_COUNTERS = (
    "dave_failures",
    "dave_failures_before_join",
    "dave_failures_in_transition",
    "replayed_packets",
    "stale_packets",
    "undecryptable_packets",
    "malformed_packets",
    "unmapped_expired",
)
DROP_DIAGNOSTICS = (DiagnosticKind.NO_KEYS,)


# -- the sandbox's process ---------------------------------------------------------------


class Rpc:
    """Requests and replies over a pipe, from an event loop (one outstanding at a time)."""

    def __init__(self, pipe: Pipe, handle: Callable[[tuple[Any, ...]], Any] | None = None) -> None:
        self._pipe = pipe
        self._handle = handle
        self._replies: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(pipe.fileno(), self._readable)

    async def call(self, *request: Any) -> Any:
        reply: asyncio.Future[Any] = self._loop.create_future()
        self._replies.append(reply)
        self._pipe.send(request)
        return await reply

    def close(self) -> None:
        self._loop.remove_reader(self._pipe.fileno())

    def _readable(self) -> None:
        while self._pipe.poll():
            try:
                message = self._pipe.recv()
            except EOFError:
                self.close()
                return
            if self._handle is None:
                self._replies.popleft().set_result(message)
            else:
                self._loop.create_task(self._serve(message))

    async def _serve(self, request: tuple[Any, ...]) -> None:
        assert self._handle is not None
        result = self._handle(request)
        if asyncio.iscoroutine(result):
            result = await result
        self._pipe.send(result)


def sandbox_process(pipe: Pipe, speakers: int, loss: float, seed: int) -> None:
    """The child: a sandbox with ``speakers`` speakers, driven by requests on ``pipe``."""
    asyncio.run(_sandbox_main(pipe, speakers, loss, seed))


async def _sandbox_main(pipe: Pipe, speakers: int, loss: float, seed: int) -> None:
    stop = asyncio.Event()
    extra: list[Any] = []  # the speaker that joins and leaves
    left_sent = 0  # frames sent by extra speakers who left
    async with Sandbox(
        speakers=speakers,
        rtcp_interval=0,  # every datagram to the bot is RTP: the fault counters are about audio
        faults=Faults(loss=loss, seed=seed),
    ) as sb:

        async def handle(request: tuple[Any, ...]) -> Any:
            nonlocal left_sent
            match request:
                case ("epoch",):
                    if extra:
                        speaker = extra.pop()
                        left_sent += speaker_sent(sb, speaker.user_id)
                        await sb.remove_speaker(speaker)
                        return "left"
                    extra.append(await sb.add_speaker())
                    return "joined"
                case ("close", user_id, code):
                    return sb.force_close(user_id, code)
                case ("close_tap",):
                    # From now on every datagram to the bot is lost (and counted
                    # so): these counters are final for what the bot can get.
                    sent = {p.user_id: p.packets_in for p in sb.participants() if p.simulated}
                    report = {"counters": sb.counters, "sent": sent, "left_sent": left_sent}
                    sb.set_faults(loss=1.0)
                    return report
                case ("stop",):
                    stop.set()
                    return "stopping"
            return None

        rpc = Rpc(pipe, handle)
        pipe.send(
            {
                "gateway_url": sb.gateway_url,
                "bot_token": sb.bot_token,
                "guild_id": sb.guild_id,
                "channel_id": sb.channel_id,
                "ca_file": sb.ca_file,
            }
        )
        await stop.wait()
        rpc.close()


def speaker_sent(sb: Sandbox, user_id: str) -> int:
    return next((p.packets_in for p in sb.participants() if p.user_id == user_id), 0)


# -- the bot's process -------------------------------------------------------------------


def rss_mb() -> float:
    """This process's resident set size, in MB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def add_stats(total: dict[str, Any], stats: object) -> None:
    """Add a stats dataclass's counters into ``total`` (numbers summed, dicts merged)."""
    for name, value in dataclasses.asdict(stats).items():  # type: ignore[call-overload]
        if isinstance(value, dict):
            merged = total.setdefault(name, {})
            for key, n in value.items():
                merged[key] = merged.get(key, 0) + n
        elif isinstance(value, int | float):
            total[name] = total.get(name, 0) + value


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(
        target=sandbox_process, args=(theirs, args.speakers, args.loss, args.seed), daemon=True
    )
    child.start()
    loop = asyncio.get_running_loop()
    info = await loop.run_in_executor(None, ours.recv)
    rpc = Rpc(ours)
    trust = ssl.create_default_context(cafile=info["ca_file"])
    shard = GatewayShard(info["bot_token"], url=info["gateway_url"], ssl=trust)
    await shard.start()
    conn = Connection(
        guild_id=info["guild_id"], channel_id=info["channel_id"], shard=shard, ssl=trust
    )
    emitted: collections.Counter[str] = collections.Counter()
    diagnostics: collections.Counter[str] = collections.Counter()
    daves: list[DaveManager] = []

    def on_frame(frame: AudioFrame) -> None:
        emitted[frame.user_id] += 1

    def on_diagnostic(diagnostic: Diagnostic) -> None:
        diagnostics[diagnostic.kind.value] += 1

    def on_ready(_: None) -> None:
        if conn.dave is not None:
            daves.append(conn.dave)

    conn.on_audio_frame.subscribe(on_frame)
    conn.on_diagnostic.subscribe(on_diagnostic)
    conn.on_ready.subscribe(on_ready)
    await conn.connect()
    assert conn.user_id is not None

    duration = args.minutes * 60.0
    start = loop.time()
    events = sorted(
        [(duration * 0.4, "resume"), (duration * 0.6, "new session")]
        + [
            (t, "epoch")
            for t in range(args.epoch_every, int(duration), args.epoch_every)
            if args.epoch_every
        ]
    )
    samples: list[dict[str, float]] = []
    next_sample = 0.0
    log: list[str] = []
    print(f"soak: {args.speakers} speakers, {args.minutes} min, loss {args.loss:.0%}", flush=True)
    print(" t (s)  RSS (MB)  emitted  state", flush=True)
    while True:
        now = loop.time() - start
        if now >= next_sample:
            sample = {"t": round(now), "rss_mb": round(rss_mb(), 1), "emitted": emitted.total()}
            samples.append(sample)
            print(
                f"{sample['t']:6.0f}  {sample['rss_mb']:8.1f}  {sample['emitted']:7d}  "
                f"{conn.current_state.value}",
                flush=True,
            )
            next_sample += args.sample_every
        if now >= duration:
            break
        if events and now >= events[0][0]:
            _, what = events.pop(0)
            if what == "epoch":
                log.append(f"{now:.0f} s: a speaker {await rpc.call('epoch')}")
            else:
                code = 4015 if what == "resume" else 4006
                await rpc.call("close", conn.user_id, code)
                log.append(f"{now:.0f} s: closed with {code} ({what})")
        wake = min(next_sample, events[0][0] if events else duration, duration)
        await asyncio.sleep(max(0.0, wake - (loop.time() - start)))

    # Close the tap, then count once what was in flight has landed.
    report = await rpc.call("close_tap")
    ready = conn.current_state is ConnectionState.READY
    await asyncio.sleep(1.0)  # a soak, not a test: the last frames land in microseconds
    receive: dict[str, Any] = {}
    add_stats(receive, conn.stats)
    dave: dict[str, Any] = {}
    for manager in daves:
        add_stats(dave, manager.stats)
    await rpc.call("stop")
    await conn.close()
    await shard.close()
    rpc.close()
    child.join(10)

    counters = report["counters"]
    relayed = counters.get("rtp_relayed", 0)
    lost = counters.get("lost", 0)
    duplicated = counters.get("duplicated", 0)
    read = receive.get("packets_received", 0)
    counted = sum(receive.get(name, 0) for name in DROP_COUNTERS)
    counted += sum(diagnostics[kind.value] for kind in DROP_DIAGNOSTICS)
    total_emitted = emitted.total()
    warm = [s for s in samples if s["t"] >= args.warmup]
    growth = max(s["rss_mb"] for s in warm) - warm[0]["rss_mb"] if warm else 0.0
    result = {
        "command": " ".join(sys.argv),
        "speakers": args.speakers,
        "minutes": args.minutes,
        "loss": args.loss,
        "events": log,
        "ready_at_end": ready,
        "frames": {
            "sent_by_speakers": sum(report["sent"].values()) + report["left_sent"],
            "relayed_to_bot": relayed,
            "lost_by_network": lost,
            "duplicated_by_network": duplicated,
            "not_read": relayed - lost + duplicated - read,
            "read": read,
            "emitted": total_emitted,
            "counted": counted,
            "unexplained": read - duplicated - total_emitted - counted,
        },
        "receive_stats": receive,
        "diagnostics": dict(diagnostics),
        "dave_stats": dave,
        "rss_mb": samples,
        "rss_growth_after_warmup_mb": round(growth, 1),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run")
    parser.add_argument("--speakers", type=int, default=25, help="simulated speakers")
    parser.add_argument("--loss", type=float, default=0.05, help="datagram loss, 0..1")
    parser.add_argument("--epoch-every", type=int, default=30, help="seconds between epochs")
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds between RSS")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS counts")
    parser.add_argument("--max-growth", type=float, default=5.0, help="allowed RSS growth, MB")
    parser.add_argument("--seed", type=int, default=1, help="the fault injector's seed")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.speakers < 1 or not 0.0 <= args.loss <= 1.0:
        parser.error("--minutes must be > 0, --speakers >= 1, --loss in 0..1")
    started = time.monotonic()
    result = asyncio.run(soak(args))
    result["wall_seconds"] = round(time.monotonic() - started)
    print(json.dumps({k: v for k, v in result.items() if k != "rss_mb"}, indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    frames = result["frames"]
    ok = (
        frames["unexplained"] == 0
        and result["rss_growth_after_warmup_mb"] <= args.max_growth
        and result["ready_at_end"]
    )
    print("soak:", "held" if ok else "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
