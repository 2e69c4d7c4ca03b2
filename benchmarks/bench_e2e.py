"""End-to-end receive benchmark: a sandbox call with N speakers, each client its own process.

Run: ``python benchmarks/bench_e2e.py [--quick] [--speakers 1,10,50,99] [--repeat 3]
[--window 3] [--plot PATH] [--no-node] [--uvloop] [--profile KIND]``.

This process hosts the sandbox, with DAVE. The clients (``e2e_client.py``: rxvoice
frames, rxvoice decode+mix, a naive Python receiver; ``e2e_djs.cjs``: discord.js
voice 0.19, frames and decode+mix, where Node.js is installed) join the call
first, then N speakers join in one DAVE commit and talk without pauses (50
packets/s each). Then the clients take turns: the others are stopped (SIGSTOP)
while one runs a warm-up and a measurement window, so every client sees the same
machine in the same minutes and the ratios hold on a noisy machine. A client's
cost is its whole-process CPU time (``getrusage``) over the window divided by the
packets its application received; the table gives the median over the repeats.

Latency: the sandbox's relay stamps each packet it sends to the client
(``Sandbox.tap_relay``, monotonic clock), the client stamps each frame it emits
(same clock, another process) only inside a separate latency window, and the two
are matched by (SSRC, sequence). ``--uvloop`` adds the rxvoice frames client on
uvloop's event loop (``rxvoice[speed]``), in the same turns. Send cost:
``send_opus`` in bursts and paced ``play_opus`` (discord.js:
``prepareAudioPacket``/``dispatchAudio`` and an ``AudioPlayer``) in a call with one
silent DAVE speaker.

The discord.js client is installed from the npm registry into
``~/.cache/rxvoice-bench/node`` (never into the repository). Not a test: nothing
here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rxvoice.testing.sandbox import Sandbox
from rxvoice.testing.sandbox.cli import describe

HERE = Path(__file__).parent
ROOT = HERE.parent
NODE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rxvoice-bench"
NODE_PACKAGES = {"@discordjs/voice": "0.19.2", "@discordjs/opus": "0.10.0"}

# Client kinds in table order, with their column titles.
COLUMNS = {
    "rx-frames": "rxvoice frames",
    "djs-frames": "discord.js frames",
    "rx-mix": "rxvoice decode+mix",
    "djs-mix": "discord.js decode+mix",
    "naive-mix": "naive Python decode+mix",
}
UVLOOP_COLUMNS = {"rx-frames+uvloop": "rxvoice frames (uvloop)"}
LATENCY_KINDS = ("rx-frames", "rx-frames+uvloop", "djs-frames")
SEND_KINDS = {"rx-send": "rxvoice", "djs-send": "discord.js"}
PACKETS_PER_SPEAKER = 50  # per second


@dataclass
class Settings:
    speakers: list[int]
    repeat: int
    warmup: float
    window: float
    latency_window: float
    node_modules: Path | None
    send_burst: int = 1000
    send_paced: int = 150


@dataclass
class ClientResult:
    us_per_packet: list[float] = field(default_factory=list)
    delivered: list[float] = field(default_factory=list)  # share of the packets sent
    latency_ms: list[float] = field(default_factory=list)


class Client:
    """A client process, driven by one JSON line per command."""

    def __init__(self, kind: str, user_id: str, process: asyncio.subprocess.Process, log: Path):
        self.kind, self.user_id, self.process, self.log = kind, user_id, process, log
        self.reported = False

    @classmethod
    async def spawn(
        cls, kind: str, user_id: str, info: dict[str, Any], settings: Settings
    ) -> Client:
        env = dict(os.environ)
        if kind.startswith("djs-"):
            assert settings.node_modules is not None
            argv = [_node(), str(HERE / "e2e_djs.cjs"), kind.removeprefix("djs-"), user_id]
            env["RXVOICE_BENCH_NODE_MODULES"] = str(settings.node_modules)
            env["NODE_EXTRA_CA_CERTS"] = info["ca_file"]
        else:
            argv = [sys.executable, str(HERE / "e2e_client.py"), kind, user_id]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        fd, name = tempfile.mkstemp(prefix=f"rxvoice-bench-{kind}-", suffix=".log")
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=fd,  # read back on failure
                env=env,
                limit=1 << 26,  # latency samples come as one long line
            )
        finally:
            os.close(fd)
        log = Path(name)
        client = cls(kind, user_id, process, log)
        client.write(info)
        await client.read(timeout=120)  # {"ready": ...}: joined and heard every speaker
        return client

    def write(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())

    async def read(self, timeout: float = 60) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"{self.kind} exited: {self.tail()}")
        return dict(json.loads(line))

    async def ask(self, cmd: str, **args: Any) -> dict[str, Any]:
        self.write({"cmd": cmd, **args})
        return await self.read()

    def pause(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGCONT)

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-2000:]
        return ""

    async def close(self) -> None:
        if self.process.returncode is None:
            self.resume()
            with contextlib.suppress(Exception):
                self.write({"cmd": "quit"})
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        self.log.unlink(missing_ok=True)


def _node() -> str:
    node = shutil.which("node")
    assert node is not None
    return node


def ensure_node_client() -> Path | None:
    """Install discord.js voice and its Opus library into the cache (once); None without Node."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        print("Node.js/npm not found: the discord.js columns are skipped.")
        return None
    prefix = NODE_CACHE / "node"
    modules = prefix / "node_modules"

    def installed(name: str) -> str | None:
        with contextlib.suppress(OSError, ValueError):
            return str(json.loads((modules / name / "package.json").read_text())["version"])
        return None

    if any(installed(name) != version for name, version in NODE_PACKAGES.items()):
        prefix.mkdir(parents=True, exist_ok=True)
        specs = [f"{name}@{version}" for name, version in NODE_PACKAGES.items()]
        print(f"installing {' '.join(specs)} into {prefix} ...", flush=True)
        done = subprocess.run(
            ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", *specs],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            print(f"npm install failed: the discord.js columns are skipped.\n{done.stderr[-1000:]}")
            return None
    # @discordjs/opus is native: its package carries prebuilt binaries for common platforms.
    loads = subprocess.run(
        [_node(), "-e", "for (const m of process.argv.slice(1)) require(m)"]
        + [str(modules / name) for name in NODE_PACKAGES],
        capture_output=True,
        text=True,
        check=False,
    )
    if loads.returncode:
        print(f"discord.js does not load: its columns are skipped.\n{loads.stderr[-1000:]}")
        return None
    return modules


# -- the receive path --------------------------------------------------------------------


async def settle(sb: Sandbox, clients: list[Client]) -> None:
    """Wait until clients and speakers are members and every DAVE transition has executed."""
    service = sb.dave()
    if service is None:
        return
    users = {c.user_id for c in clients} | {s.user_id for s in sb.speakers}
    await sb.wait_for(
        lambda: (
            (len(users) < 2 or users <= set(service.members))  # alone, nobody has a group
            and not service.pending_transitions
            and all(s.epoch == service.epoch for s in sb.speakers)
        ),
        timeout=180,
    )


async def measure_latency(sb: Sandbox, client: Client, seconds: float) -> list[float]:
    """Relay send to the client's emission, in ms, matched by (SSRC, sequence)."""
    sent: dict[tuple[int, int], int] = {}

    def stamp(user_id: str, ssrc: int, sequence: int) -> None:
        if user_id == client.user_id:
            sent[ssrc, sequence] = time.monotonic_ns()

    sb.tap_relay(stamp)
    try:
        await client.ask("latency-on")
        await asyncio.sleep(seconds)
        samples = (await client.ask("latency-off"))["samples"]
    finally:
        sb.tap_relay(None)
    return [
        (emitted - sent[ssrc, seq]) / 1e6
        for ssrc, seq, emitted in samples
        if (ssrc, seq) in sent and emitted >= sent[ssrc, seq]
    ]


async def measure_receive(n: int, kinds: list[str], settings: Settings) -> dict[str, ClientResult]:
    results = {kind: ClientResult() for kind in kinds}
    started = time.monotonic()
    async with Sandbox() as sb:
        clients = await join(sb, kinds, 1, settings)
        try:
            await settle(sb, clients)
            async with talking_speakers(sb, n, clients) as speakers:
                clients = await hear_everyone(sb, clients, speakers)
                print(f"  {n} speakers heard at {time.monotonic() - started:.1f} s", flush=True)
                # From here on nobody joins: a stopped client misses no DAVE transition.
                for client in clients:
                    client.pause()
                for r in range(settings.repeat):
                    turn = clients[r % len(clients) :] + clients[: r % len(clients)]
                    for client in turn:
                        if not alive([client]):  # it died in another's turn (its log printed)
                            continue
                        try:
                            await measure_turn(sb, client, results[client.kind], n, settings)
                        except (RuntimeError, TimeoutError) as exc:  # it died in its own
                            print(f"  {client.kind} failed its turn: {exc!r}", flush=True)
        finally:
            for client in clients:
                await client.close()
    return results


async def measure_turn(
    sb: Sandbox, client: Client, result: ClientResult, n: int, settings: Settings
) -> None:
    """One client's turn: warm-up, CPU window, latency window; the others are stopped."""
    client.resume()
    await asyncio.sleep(settings.warmup)
    before = await client.ask("mark")
    await asyncio.sleep(settings.window)
    after = await client.ask("mark")
    packets = after["frames"] - before["frames"]
    cpu = after["cpu"] - before["cpu"]
    result.us_per_packet.append(cpu / max(packets, 1) * 1e6)
    result.delivered.append(packets / (settings.window * n * PACKETS_PER_SPEAKER))
    if client.kind in LATENCY_KINDS:
        result.latency_ms += await measure_latency(sb, client, settings.latency_window)
    client.pause()


@contextlib.asynccontextmanager
async def talking_speakers(sb: Sandbox, n: int, clients: list[Client]) -> AsyncIterator[list[str]]:
    """Add ``n`` speakers in one DAVE commit; they talk, without pauses, once it is settled.

    The speakers join last: with them first, each client's join would make every
    one of them commit. They start talking only then: a client busy with media
    while it processes the commit may fall behind, fail to decrypt and reset its
    DAVE session.
    """
    speakers = await sb.add_speakers(n, talk=False)
    await settle(sb, clients)
    talking = [asyncio.create_task(s.run(pause_seconds=None)) for s in speakers]
    try:
        yield [s.user_id for s in speakers]
    finally:
        for task in talking:
            task.cancel()


async def hear_everyone(sb: Sandbox, clients: list[Client], speakers: list[str]) -> list[Client]:
    """Wait until every client heard every speaker and the DAVE group stayed put meanwhile.

    A client that fell behind while the speakers joined may fail to decrypt, reset
    its DAVE session (op 31) and so start a new epoch: then everyone listens again.
    Clients that hear nothing in time are stopped and left out.
    """
    service = sb.dave()
    for _ in range(3):
        epoch = service.epoch if service is not None else 0
        answers = await asyncio.gather(
            *(c.ask("heard", speakers=speakers) for c in clients), return_exceptions=True
        )
        for client, answer in zip(clients, answers, strict=True):
            if isinstance(answer, BaseException):
                print(f"  {client.kind} did not hear every speaker ({answer!r}): {client.tail()}")
                await client.close()
                client.reported = True
        clients = alive(clients)
        await settle(sb, clients)
        if service is None or service.epoch == epoch:
            break
        print(f"  the DAVE group moved on meanwhile (epoch {epoch} to {service.epoch})")
    if service is not None:
        stats = service.stats
        print(
            f"  DAVE epoch {service.epoch}: {stats.invalid_reports} op 31, "
            f"{stats.transition_timeouts} transition timeouts"
        )
    return clients


async def join(sb: Sandbox, kinds: list[str], first_id: int, settings: Settings) -> list[Client]:
    """Start the clients one after the other; those that fail to join are reported."""
    info = describe(sb)
    clients = []
    for i, kind in enumerate(kinds):
        user_id = str(900_000_000_000_000_000 + first_id + i)
        try:
            clients.append(await Client.spawn(kind, user_id, info, settings))
        except (RuntimeError, TimeoutError) as exc:
            print(f"  {kind} did not join: {exc!r}", flush=True)
    return clients


def alive(clients: list[Client]) -> list[Client]:
    """The clients still running; the others' logs are printed."""
    for client in clients:
        if client.process.returncode is not None and not client.reported:
            client.reported = True
            print(f"  {client.kind} exited ({client.process.returncode}): {client.tail()}")
    return [c for c in clients if c.process.returncode is None]


async def profile(kind: str, n: int, settings: Settings) -> None:
    """cProfile one client over a window and print its top functions per packet."""
    async with Sandbox() as sb:
        clients = await join(sb, [kind], 1, settings)
        if not clients:
            return
        (client,) = clients
        try:
            await settle(sb, clients)
            async with talking_speakers(sb, n, clients) as speakers:
                await client.ask("heard", speakers=speakers)
                await asyncio.sleep(settings.warmup)
                await client.ask("profile-on")
                await asyncio.sleep(settings.window)
                got = await client.ask("profile-off")
        finally:
            await client.close()
    packets = max(got["frames"], 1)
    print(f"\n### cProfile of {COLUMNS.get(kind, kind)}, N={n}, {packets} packets\n")
    print("| function | calls/packet | own µs/packet | cumulative µs/packet |")
    print("|---|---|---|---|")
    for calls, own, cumulative, name in got["top"]:
        print(
            f"| `{name}` | {calls / packets:.2f} | {own / packets * 1e6:.1f} "
            f"| {cumulative / packets * 1e6:.1f} |"
        )


# -- the send path -----------------------------------------------------------------------


async def measure_send(kinds: list[str], settings: Settings) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {}
    async with Sandbox() as sb:
        clients = await join(sb, kinds, 101, settings)
        try:
            await sb.add_speakers(1, talk=False)  # a silent member: DAVE needs a group of two
            await settle(sb, clients)
            for client in clients:
                client.pause()
            for _ in range(settings.repeat):
                for client in alive(clients):
                    client.resume()
                    got = await client.ask(
                        "send", burst=settings.send_burst, repeat=5, paced=settings.send_paced
                    )
                    client.pause()
                    result = results.setdefault(client.kind, {"burst_us": [], "paced_us": []})
                    result["burst_us"] += got["burst_us"]
                    result["paced_us"].append(got["paced_us"])
        finally:
            for client in clients:
                await client.close()
    return results


# -- reporting ---------------------------------------------------------------------------


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("davey", "cryptography", "PyNaCl", "opuslib", "numpy", "reactivex")
    )
    node = "no Node.js"
    if shutil.which("node"):
        node = (
            "Node.js "
            + subprocess.run([_node(), "--version"], capture_output=True, text=True).stdout.strip()
        )
    return (
        f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()} ({versions}); {node}"
    )


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cell(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_tables(
    receive: dict[int, dict[str, ClientResult]],
    send: dict[str, dict[str, list[float]]],
    kinds: list[str],
) -> None:
    print("\n### µs of CPU per received packet (median of the repeats)\n")
    print("| N | DAVE | " + " | ".join(COLUMNS[k] for k in kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for n, results in receive.items():
        cells = [cell(median(results[k].us_per_packet)) for k in kinds]
        print(f"| {n} | yes | " + " | ".join(cells) + " |")
    print("\nShare of the speakers' packets the application received in the windows:")
    for n, results in receive.items():
        shares = ", ".join(
            f"{COLUMNS[k]} {cell(100 * (median(results[k].delivered) or 0), 1)} %" for k in kinds
        )
        print(f"- N={n}: {shares}")
    latency = [k for k in LATENCY_KINDS if k in kinds]
    print("\n### Latency, relay send → emission, ms (p50 / p99)\n")
    print("| N | " + " | ".join(COLUMNS[k] for k in latency) + " |")
    print("|---|" + "---|" * len(latency))
    for n, results in receive.items():
        cells = [
            f"{cell(percentile(results[k].latency_ms, 0.5), 2)} / "
            f"{cell(percentile(results[k].latency_ms, 0.99), 2)}"
            for k in latency
        ]
        print(f"| {n} | " + " | ".join(cells) + " |")
    if send:
        print("\n### Send, µs of CPU per frame (DAVE on; median)\n")
        print("| what | " + " | ".join(SEND_KINDS[k] for k in send) + " |")
        print("|---|" + "---|" * len(send))
        for what, key in (
            ("burst (`send_opus` / `dispatchAudio`)", "burst_us"),
            ("paced (`play_opus` / `AudioPlayer`)", "paced_us"),
        ):
            print(
                f"| {what} | " + " | ".join(cell(median(r[key]), 1) for r in send.values()) + " |"
            )


def plot(
    receive: dict[int, dict[str, ClientResult]], kinds: list[str], path: Path, note: str
) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    speakers = list(receive)
    for kind in kinds:
        points = [(n, median(receive[n][kind].us_per_packet)) for n in speakers]
        xs = [n for n, us in points if us is not None]
        ys = [us for _, us in points if us is not None]
        library = kind.split("-")[0]
        color = {"rx": "tab:blue", "djs": "tab:orange", "naive": "tab:green"}[library]
        style = "-." if kind.endswith("uvloop") else {"rx": "-", "djs": "--", "naive": ":"}[library]
        marker = "s" if kind.endswith("mix") else "o"
        ax.plot(xs, ys, style, color=color, marker=marker, label=COLUMNS[kind])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(speakers, [str(n) for n in speakers])
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks([10, 20, 30, 50, 100, 200, 300, 500])
    ax.set_xlabel("speakers (50 packets/s each, DAVE)")
    ax.set_ylabel("µs CPU per received packet")
    ax.set_title(f"End-to-end receive cost, {note}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    print(f"\nplot: {path}")


# -- main --------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    node_modules = None if args.no_node else ensure_node_client()
    settings = Settings(
        speakers=args.speakers,
        repeat=args.repeat,
        warmup=args.warmup,
        window=args.window,
        latency_window=args.latency_window,
        node_modules=node_modules,
    )
    if args.uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            print("uvloop is not installed (pip install 'rxvoice[speed]'): --uvloop ignored.")
        else:
            COLUMNS.update(UVLOOP_COLUMNS)
    kinds = [k for k in COLUMNS if node_modules is not None or not k.startswith("djs-")]
    print(f"machine: {machine()}")
    load_at_start = os.getloadavg()[0]
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.profile:
        for n in settings.speakers:
            await profile(args.profile, n, settings)
        return
    started = time.monotonic()
    receive = {}
    for n in settings.speakers:
        print(f"N={n}", flush=True)
        receive[n] = await measure_receive(n, kinds, settings)
    send_kinds = [k for k in SEND_KINDS if node_modules is not None or not k.startswith("djs-")]
    print("send", flush=True)
    send = await measure_send(send_kinds, settings)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at the end: {load}; {time.monotonic() - started:.0f} s")
    print_tables(receive, send, kinds)
    if args.plot:
        note = (
            f"{datetime.date.today()}, {os.cpu_count()} cores, "
            f"load average {load_at_start:.1f} → {os.getloadavg()[0]:.1f}"
        )
        plot(receive, kinds, args.plot, note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=10 and 50, one short repeat")
    parser.add_argument("--speakers", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--window", type=float, default=None, help="seconds measured per turn")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--latency-window", type=float, default=2.0)
    parser.add_argument("--plot", type=Path, default=None, help="write the PNG plot here")
    parser.add_argument("--no-node", action="store_true", help="skip discord.js")
    parser.add_argument(
        "--uvloop", action="store_true", help="also run the rxvoice frames client on uvloop"
    )
    parser.add_argument(
        "--profile", metavar="KIND", help="only cProfile one client (e.g. rx-frames) instead"
    )
    args = parser.parse_args()
    if args.speakers is None:
        args.speakers = [10, 50] if args.quick else [1, 10, 50, 99]
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.window is None:
        args.window = 2.0 if args.quick else 3.0
    if args.quick:
        args.warmup, args.latency_window = 1.0, 1.0
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
