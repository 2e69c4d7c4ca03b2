"""``python -m rxvoice record``: record a voice channel, one WAV per user on the call's timeline.

::

    DISCORD_TOKEN=... python -m rxvoice record --guild G --channel C
        [--seconds N] [--out DIR] [--users ID[=NAME],...] [--gateway-url URL --ca-file PEM]

It joins the channel through the built-in :class:`~rxvoice.shard.GatewayShard`,
shows a live view (who is speaking, levels, packets and loss, the DAVE epoch
and its members), and leaves in ``--out``: one WAV per user on the call's
timeline (silence where they were quiet, so every file has the recording's
length and they line up in any editor), named ``NAME-ID.wav`` (or ``ID.wav``),
and ``mix.wav``. It never replaces or deletes a file: an existing name gets
``-2``, ``-3``... (see :func:`rxvoice.operators.write_timeline`).

It stops after ``--seconds``, on Ctrl-C (SIGINT) or SIGTERM, or when the
connection ends for good; the files are finished in every case.

Exit codes: 0 the recording ended normally (after ``--seconds``, or Ctrl-C /
SIGTERM: stopping is how a recording ends); 1 it could not run (libopus
missing, the gateway refused the token, the channel could not be joined, a
file could not be written); 2 bad arguments or no ``DISCORD_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import re
import signal
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import reactivex
from reactivex import operators as ops

from rxvoice import operators as vops
from rxvoice.errors import RxVoiceError

if TYPE_CHECKING:
    from reactivex import Observable
    from reactivex.abc import DisposableBase

    from rxvoice.connection import Connection
    from rxvoice.events import AudioFrame, PcmChunk
    from rxvoice.shard import GatewayShard
    from rxvoice.view import CallMonitor

__all__ = ["Recording", "add_arguments", "add_verbose", "configure_logging", "run"]

DISCORD_GATEWAY = "wss://gateway.discord.gg/?v=10&encoding=json"
GATEWAY_TIMEOUT = 10.0
"""Seconds to wait for the main gateway's READY."""
FINISH_TIMEOUT = 10.0
"""Seconds to wait for the files to be finished after the connection closed."""


def snowflake(text: str) -> str:
    """An argparse type: a Discord id."""
    from rxvoice.protocol.gateway import check_snowflake

    try:
        return check_snowflake(text, "id")
    except RxVoiceError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Discord id (a number)") from None


def gateway_url(text: str) -> str:
    """An argparse type: a main-gateway URL (``ws://`` or ``wss://``)."""
    from rxvoice.shard.gateway import check_gateway_url

    try:
        return check_gateway_url(text)
    except RxVoiceError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a ws:// or wss:// URL") from None


def output_folder(text: str) -> Path:
    """An argparse type: a folder for the files (created later if it does not exist)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    return path


def users_option(text: str) -> dict[str, str]:
    """An argparse type: ``ID[=NAME],...``: the users to record, with optional names."""
    users: dict[str, str] = {}
    for item in text.split(","):
        user, _, name = item.strip().partition("=")
        users[snowflake(user.strip())] = name.strip()
    return users


def positive_seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``record`` subcommand's options."""
    parser.add_argument("--guild", type=snowflake, required=True, help="the guild (server) id")
    parser.add_argument("--channel", type=snowflake, required=True, help="the voice channel id")
    parser.add_argument(
        "--seconds", type=positive_seconds, help="stop after this long (default: Ctrl-C)"
    )
    parser.add_argument(
        "--out",
        type=output_folder,
        help="the folder for the WAV files (default: recordings/DATE-TIME; created if needed)",
    )
    parser.add_argument(
        "--users",
        type=users_option,
        metavar="ID[=NAME],...",
        help="record only these users; NAME labels their file (default: everyone)",
    )
    parser.add_argument(
        "--gateway-url",
        type=gateway_url,
        default=DISCORD_GATEWAY,
        help="the main gateway (default: Discord's; a local Discord such as the sandbox)",
    )
    parser.add_argument("--ca-file", type=Path, help="a CA certificate to trust (PEM)")
    add_verbose(parser)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    """Declare ``-v``: the library's log on standard error."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log on stderr (by default only the live view, the summary and errors show)",
    )


def configure_logging(verbose: bool) -> None:
    """Log at INFO on stderr with ``-v``; else keep log lines out of the live view.

    Without ``-v`` nothing is logged: what matters shows in the view and the
    summary, and a failure is reported once, as the command's error line.
    """
    if verbose:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    elif not logging.getLogger().handlers:
        # Python prints warnings and errors of unconfigured programs to stderr
        # ("last resort"); a handler that drops them keeps the view clean.
        logging.getLogger().addHandler(logging.NullHandler())


def run(args: argparse.Namespace) -> int:
    """Run the record subcommand; returns the exit code."""
    token = os.environ.get("DISCORD_TOKEN", "").strip()
    if not token:
        print("rxvoice record: error: set DISCORD_TOKEN to the bot's token", file=sys.stderr)
        return 2
    context = None
    if args.ca_file is not None:
        try:
            context = ssl.create_default_context(cafile=str(args.ca_file))
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            reason = "is not a file" if not args.ca_file.is_file() else f"is not PEM ({exc})"
            print(f"rxvoice record: error: --ca-file {args.ca_file} {reason}", file=sys.stderr)
            return 2
    from rxvoice.audio.opus import require_opus

    require_opus()
    configure_logging(args.verbose)
    out: Path = args.out or Path("recordings") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return asyncio.run(_record(args, token, out, context))


_MIX = re.compile(r"mix(-[0-9]{1,3})?")  # mix.wav, or mix-2.wav... when a mix.wav was there


@dataclass(frozen=True, slots=True)
class RecordedFile:
    """A file the recording wrote."""

    path: Path
    seconds: float

    @property
    def is_mix(self) -> bool:
        """Whether it is the mix (user files end with a Discord id, never 1-3 digits)."""
        return _MIX.fullmatch(self.path.stem) is not None


class Recording:
    """A recording of a connection: per-user timeline WAVs, the mix, and a live monitor.

    It records from :meth:`start` on (once the connection is connected) until
    :meth:`finish`. Used by ``record`` and ``demo``.

    Args:
        conn: The connection to record.
        out: The folder for the files.
        names: Display names by user id (they label the files and the view).
        users: Record only these users; everyone when ``None``.
    """

    def __init__(
        self,
        conn: Connection,
        out: Path,
        *,
        names: Mapping[str, str] | None = None,
        users: set[str] | None = None,
    ) -> None:
        self.conn = conn
        self.out = out
        self.names = dict(names or {})
        self.users = users
        self.paths: list[Path] = []
        self.error: Exception | None = None
        self.monitor: CallMonitor | None = None
        self._done: asyncio.Future[None] | None = None
        self._subscriptions: list[DisposableBase] = []

    @property
    def done(self) -> asyncio.Future[None]:
        """Resolved when the files are finished, or as soon as writing failed."""
        assert self._done is not None, "start() first"
        return self._done

    def name(self, user_id: str, name: str) -> None:
        """Name a user (e.g. one who joins later): their file and their row in the view."""
        self.names[user_id] = name
        if self.monitor is not None:
            self.monitor.names[user_id] = name
            if user_id in self.monitor.users:
                self.monitor.users[user_id].name = name

    def start(self) -> CallMonitor:
        """Start recording now (the call time of sample 0 of every file)."""
        from rxvoice.view import CallMonitor

        loop = asyncio.get_running_loop()
        start = loop.time()
        monitor = self.monitor = CallMonitor(start, names=self.names, clock=loop.time)
        frames: Observable[AudioFrame] = self.conn.on_audio_frame
        if self.users is not None:
            wanted = self.users

            def chosen(frame: AudioFrame) -> bool:
                return frame.user_id in wanted

            frames = frames.pipe(ops.filter(chosen))
        frames = frames.pipe(ops.share())
        pcm: Observable[PcmChunk] = frames.pipe(vops.decode_opus(), ops.share())
        activity = pcm.pipe(vops.voice_activity())
        self._subscriptions = monitor.attach(self.conn, pcm, activity, frames)
        done = self._done = loop.create_future()

        def finished(error: Exception | None = None) -> None:
            self.error = error
            if not done.done():
                done.set_result(None)

        timeline = reactivex.merge(pcm, pcm.pipe(vops.mix())).pipe(
            vops.write_timeline(self.out, start=start, labels=self.names.get)
        )
        self._subscriptions.append(
            timeline.subscribe(self.paths.append, finished, lambda: finished())
        )
        return monitor

    async def finish(self, timeout: float = FINISH_TIMEOUT) -> list[RecordedFile]:
        """Close the connection and wait for the files to be finished.

        Returns:
            The files written, with their durations.

        Raises:
            OSError: If a file could not be written.
            TimeoutError: If the files were not finished in time.
        """
        await self.conn.disconnect()  # leaves, then completes the streams: the sinks finish
        if self._done is not None:
            await asyncio.wait_for(asyncio.shield(self._done), timeout)
        if self.monitor is not None:
            self.monitor.finish(asyncio.get_running_loop().time())
        for subscription in self._subscriptions:
            subscription.dispose()
        if self.error is not None:
            raise self.error
        files = [RecordedFile(p, _seconds(p)) for p in self.paths]
        return sorted(files, key=lambda f: (f.is_mix, f.path.name))


def _seconds(path: Path) -> float:
    import wave

    with wave.open(str(path)) as wav:
        return float(wav.getnframes() / wav.getframerate())


def install_stop_signals(stop: asyncio.Event) -> Callable[[], None]:
    """Make SIGINT and SIGTERM set ``stop``; returns the function that restores them."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)

    def restore() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return restore


async def run_until(stop: asyncio.Event, seconds: float | None, *also: asyncio.Future[Any]) -> None:
    """Wait for ``stop``, ``seconds`` (if given) or any of ``also``, whichever comes first."""
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([waiter, *also], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


def print_files(files: Sequence[RecordedFile], out: Path) -> None:
    """The summary of the files written."""
    if not files:
        print(f"nothing was heard: no file written in {out}")
        return
    print(f"{len(files)} files in {out}, each {files[0].seconds:.1f} s, on the call's timeline:")
    for f in files:
        print(f"  {f.path.name}")


async def _record(
    args: argparse.Namespace, token: str, out: Path, context: ssl.SSLContext | None
) -> int:
    from rxvoice.shard import GatewayShard
    from rxvoice.view import LiveView

    stop = asyncio.Event()
    restore = install_stop_signals(stop)
    shard = GatewayShard(token, url=args.gateway_url, ssl=context)
    users: dict[str, str] | None = args.users
    conn: Connection | None = None
    try:
        joining = asyncio.ensure_future(_join(shard, args, context))
        await run_until(stop, None, joining)
        if not joining.done():
            joining.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await joining
            print("stopped before joining the channel; nothing recorded")
            return 0
        conn = joining.result()
        names = {u: n for u, n in (users or {}).items() if n}
        if shard.user_id is not None:
            names.setdefault(shard.user_id, "(this bot)")  # in the DAVE group, never heard
        recording = Recording(conn, out, names=names, users=set(users) if users else None)
        monitor = recording.start()
        closed = asyncio.get_running_loop().create_future()
        conn.on_disconnected.subscribe(
            lambda d: None if d.will_reconnect or closed.done() else closed.set_result(d.reason)
        )
        print(f"recording channel {args.channel} into {out}/ (Ctrl-C stops)", flush=True)
        async with LiveView(monitor):
            await run_until(stop, args.seconds, closed, recording.done)
        if closed.done():
            print(f"the connection ended: {closed.result()}")
        files = await recording.finish()
        print_files(files, out)
        packets, lost, concealed, recovered = monitor.totals()
        print(
            f"{packets} packets, {lost} lost, {concealed} concealed, {recovered} recovered by FEC; "
            f"{monitor.dave_text()}"
        )
        return 0
    except (RxVoiceError, OSError, TimeoutError) as error:
        print(f"rxvoice record: error: {_describe(error)}", file=sys.stderr)
        return 1
    finally:
        if conn is not None:
            await conn.close()
        await shard.close()
        restore()


async def _join(
    shard: GatewayShard, args: argparse.Namespace, context: ssl.SSLContext | None
) -> Connection:
    from rxvoice.connection import Connection

    try:
        await shard.start(timeout=GATEWAY_TIMEOUT)
    except TimeoutError:
        raise TimeoutError(
            f"no answer from the gateway at {shard.url} in {GATEWAY_TIMEOUT:g} s "
            "(check --gateway-url and the network)"
        ) from None
    conn = Connection(guild_id=args.guild, channel_id=args.channel, shard=shard, ssl=context)
    try:
        await conn.connect()
    except BaseException:
        await conn.close()
        raise
    return conn


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError) and not str(error):
        return "timed out joining the voice channel (check the ids, the bot's permissions)"
    return str(error) or type(error).__name__
