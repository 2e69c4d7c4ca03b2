"""The live view of a call, shared by ``python -m rxvoice record`` and ``demo``.

:class:`CallMonitor` gathers what a person watching a call wants to see, from
a :class:`~rxvoice.Connection` and its decoded audio: who is speaking, how loud,
packets received, lost, concealed and recovered by FEC per user, the DAVE
epoch, its members and the privacy code. :class:`LiveView` shows it: a
``rich`` table that fits 80 columns, redrawn in place in a terminal, or one
line per second when the output is not a terminal (a log, a pipe, CI).
:func:`plot_timeline` draws the call afterwards (``timeline.png``).

All times are call times (see :attr:`rxvoice.events.PcmChunk.time`), shown
as seconds since the monitor started.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Self

from rxvoice.audio.dsp import dbfs
from rxvoice.events import (
    AudioFrame,
    ClientConnect,
    ClientDisconnect,
    DaveEpochTransition,
    PcmChunk,
    VoiceActivityChange,
)
from rxvoice.protocol.seq import seq_add, seq_diff

if TYPE_CHECKING:
    from reactivex import Observable
    from reactivex.abc import DisposableBase
    from rich.console import Console, RenderableType

    from rxvoice.connection import Connection

__all__ = ["CallMonitor", "EpochChange", "LiveView", "UserStats", "plot_timeline"]

FLOOR_DB = -60.0
"""The bottom of the level bars and plots (dBFS)."""

BIN = 0.1
"""Seconds per point of the level history kept for the plot."""

_MAX_SEQ_JUMP = 100  # a larger sequence jump is a resync, not a loss


@dataclass(slots=True)
class UserStats:
    """One user, as the view shows them.

    Attributes:
        user_id: The user.
        name: What the view calls them.
        speaking: Voice activity says they are speaking.
        level: The level of their latest chunk (dBFS, at least :data:`FLOOR_DB`).
        packets: Audio packets received.
        lost: Packets missing from their sequence numbers.
        concealed: 20 ms chunks synthesised by loss concealment.
        recovered: Chunks rebuilt from FEC data.
        present: In the call (joined and not left).
        levels: ``(time, peak dBFS)`` per :data:`BIN` seconds heard, for the plot.
        spans: ``(start, end)`` call times of their speech; ``end`` is
            ``None`` while they speak.
    """

    user_id: str
    name: str
    speaking: bool = False
    level: float = FLOOR_DB
    packets: int = 0
    lost: int = 0
    concealed: int = 0
    recovered: int = 0
    present: bool = True
    levels: list[tuple[float, float]] = field(default_factory=list)
    spans: list[tuple[float, float | None]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EpochChange:
    """A DAVE transition, seen at call time ``time``."""

    time: float
    epoch: int
    members: int
    privacy_code: str | None


class CallMonitor:
    """What is going on in a call, fed by a Connection's streams (no I/O, no timers).

    Args:
        start: The call time shown as 0 s (e.g. ``loop.time()`` at the start).
        names: Display names by user id; others are shown by id.
        clock: The call clock (``loop.time`` for a Connection), for the
            epoch changes and the elapsed time.
    """

    def __init__(
        self,
        start: float,
        *,
        names: Mapping[str, str] | None = None,
        clock: Callable[[], float],
    ) -> None:
        self.start = start
        self.names = dict(names or {})
        self.clock = clock
        self.users: dict[str, UserStats] = {}
        self.epochs: list[EpochChange] = []
        self.protocol_version = 0
        self.members: tuple[str, ...] = ()
        self.privacy_code: str | None = None
        self.packets_total = 0
        self._next_seq: dict[int, int] = {}

    # -- feeding -------------------------------------------------------------

    def attach(
        self,
        conn: Connection,
        pcm: Observable[PcmChunk],
        activity: Observable[VoiceActivityChange],
        frames: Observable[AudioFrame] | None = None,
    ) -> list[DisposableBase]:
        """Subscribe to a connection and its decoded audio; returns the subscriptions.

        Args:
            conn: The connection (its roster, DAVE transitions and counters).
            pcm: Its decoded chunks (e.g. ``conn.on_audio_frame.pipe(decode_opus())``).
            activity: Voice activity of those chunks.
            frames: The frames ``pcm`` was decoded from; ``conn.on_audio_frame``
                by default.
        """
        for user_id in sorted(conn.users):  # already in the call, heard or not
            self.user(user_id)
        dave = conn.dave
        if dave is not None and dave.ready:  # the group as it is now, before any change
            self.on_transition(
                DaveEpochTransition(
                    dave.epoch, dave.protocol_version, 0, dave.members, dave.privacy_code
                )
            )
        return [
            (frames if frames is not None else conn.on_audio_frame).subscribe(self.on_frame),
            pcm.subscribe(self.on_chunk),
            activity.subscribe(self.on_activity),
            conn.on_dave_epoch_transition.subscribe(self.on_transition),
            conn.on_client_connect.subscribe(self.on_roster),
            conn.on_client_disconnect.subscribe(self.on_roster),
        ]

    def user(self, user_id: str) -> UserStats:
        """The row of ``user_id`` (created on first sight)."""
        stats = self.users.get(user_id)
        if stats is None:
            stats = self.users[user_id] = UserStats(user_id, self.names.get(user_id, user_id))
        return stats

    def on_frame(self, frame: AudioFrame) -> None:
        """Count a packet, and the packets missing before it."""
        self.packets_total += 1
        if frame.user_id is None:
            return
        stats = self.user(frame.user_id)
        stats.packets += 1
        expected = self._next_seq.get(frame.ssrc)
        if expected is not None:
            missing = seq_diff(frame.sequence, expected)
            if 0 < missing <= _MAX_SEQ_JUMP:
                stats.lost += missing
        self._next_seq[frame.ssrc] = seq_add(frame.sequence, 1)

    def on_chunk(self, chunk: PcmChunk) -> None:
        """Take a decoded chunk: its level, and whether it was concealed or recovered."""
        if chunk.user_id is None:
            return
        stats = self.user(chunk.user_id)
        stats.concealed += chunk.concealed
        stats.recovered += chunk.recovered
        level = max(FLOOR_DB, dbfs(chunk.pcm, floor=FLOOR_DB))
        stats.level = level
        at = round((chunk.time - self.start) / BIN) * BIN
        if stats.levels and stats.levels[-1][0] >= at - 1e-9:
            last_at, last = stats.levels[-1]
            stats.levels[-1] = (last_at, max(last, level))
        else:
            stats.levels.append((at, level))

    def on_activity(self, change: VoiceActivityChange) -> None:
        """Take a start or stop of speech."""
        if change.user_id is None:
            return
        stats = self.user(change.user_id)
        stats.speaking = change.speaking
        at = change.time - self.start
        if change.speaking:
            stats.spans.append((at, None))
        elif stats.spans and stats.spans[-1][1] is None:
            stats.spans[-1] = (stats.spans[-1][0], at)
        if not change.speaking:
            stats.level = FLOOR_DB

    def on_transition(self, transition: DaveEpochTransition) -> None:
        """Take a DAVE transition."""
        self.protocol_version = transition.protocol_version
        self.members = transition.members
        self.privacy_code = transition.privacy_code
        self.epochs.append(
            EpochChange(
                self.clock() - self.start,
                transition.epoch,
                len(transition.members),
                transition.privacy_code,
            )
        )

    def on_roster(self, event: ClientConnect | ClientDisconnect) -> None:
        """Take a join or a leave."""
        stats = self.user(event.user_id)
        stats.present = isinstance(event, ClientConnect)
        if not stats.present:
            stats.speaking = False
            stats.level = FLOOR_DB

    def finish(self, end: float) -> None:
        """Close the speech spans still open at call time ``end``."""
        for stats in self.users.values():
            if stats.spans and stats.spans[-1][1] is None:
                stats.spans[-1] = (stats.spans[-1][0], end - self.start)

    # -- reading -------------------------------------------------------------

    def rows(self) -> list[UserStats]:
        """The users: the named ones first, in the order of :attr:`names`, then the others."""
        order = {user_id: i for i, user_id in enumerate(self.names)}
        return sorted(self.users.values(), key=lambda u: order.get(u.user_id, len(order)))

    @property
    def elapsed(self) -> float:
        """Seconds since :attr:`start`."""
        return self.clock() - self.start

    @property
    def epoch(self) -> int | None:
        """The DAVE epoch (``None`` before any transition)."""
        return self.epochs[-1].epoch if self.epochs else None

    def totals(self) -> tuple[int, int, int, int]:
        """``(packets, lost, concealed, recovered)`` over every user."""
        rows = self.users.values()
        return (
            sum(u.packets for u in rows),
            sum(u.lost for u in rows),
            sum(u.concealed for u in rows),
            sum(u.recovered for u in rows),
        )

    def dave_text(self) -> str:
        """The DAVE state in a few words."""
        if self.epoch is None:
            return "DAVE: waiting for the group"
        if self.protocol_version == 0:
            return "DAVE off (transport encryption only)"
        members = ", ".join(self.names.get(m, m) for m in self.members)
        return f"DAVE epoch {self.epoch}, {len(self.members)} in the group: {members}"

    def status_line(self) -> str:
        """One line: the time, who speaks, the counters and DAVE (for logs and pipes)."""
        speaking = ", ".join(u.name for u in self.rows() if u.speaking) or "nobody"
        packets, lost, concealed, recovered = self.totals()
        epoch = "-" if self.epoch is None else str(self.epoch)
        return (
            f"{self.elapsed:6.1f}s  speaking: {speaking}  |  packets {packets}, lost {lost}, "
            f"concealed {concealed}, FEC {recovered}  |  DAVE epoch {epoch}, "
            f"{len(self.members)} in group"
        )

    def render(self) -> RenderableType:
        """The live table (fits 80 columns) with the DAVE state under it."""
        from rich import box
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(
            box=box.SIMPLE_HEAD,
            title=f"rxvoice  {self.elapsed:5.1f} s",
            title_justify="left",
            pad_edge=False,
            padding=(0, 1),
        )
        table.add_column("user", max_width=22, no_wrap=True, overflow="ellipsis")
        table.add_column("", width=1)
        table.add_column("level", width=14, no_wrap=True)
        table.add_column("pkts", justify="right", width=6)
        table.add_column("lost", justify="right", width=5)
        table.add_column("conc", justify="right", width=5)
        table.add_column("FEC", justify="right", width=5)
        for stats in self.rows():
            style = "" if stats.present else "dim"
            dot = Text("●", style="bold green") if stats.speaking else Text("·", style="dim")
            name = stats.name if stats.present else f"{stats.name} (left)"
            table.add_row(
                Text(name, style=style),
                dot,
                _bar(stats.level, stats.speaking),
                str(stats.packets),
                _count(stats.lost),
                _count(stats.concealed),
                _count(stats.recovered),
            )
        dave = Text(self.dave_text(), overflow="fold")
        code = self.privacy_code
        lines: list[Any] = [table, dave]
        if code:
            lines.append(Text(f"privacy code {_grouped(code)}", style="cyan", overflow="fold"))
        return Group(*lines)


def _bar(level: float, speaking: bool) -> Any:
    from rich.text import Text

    filled = round(10 * (level - FLOOR_DB) / -FLOOR_DB)
    filled = max(0, min(10, filled))
    bar = Text("█" * filled, style="green" if speaking else "white")
    bar.append("·" * (10 - filled), style="dim")
    bar.append(f"{level:4.0f}" if level > FLOOR_DB else "   -", style="dim")
    return bar


def _count(n: int) -> Any:
    from rich.text import Text

    return Text(str(n), style="yellow" if n else "dim")


def _grouped(code: str) -> str:
    """A privacy code in groups of five, as Discord shows it."""
    digits = code.replace(" ", "")
    return " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))


class LiveView:
    """Shows a :class:`CallMonitor` while a call runs; use as an async context manager.

    In a terminal, a ``rich`` live table redrawn in place four times a second
    (by a task on the event loop, where the monitor is fed); otherwise one
    :meth:`CallMonitor.status_line` per second.

    Args:
        monitor: What to show.
        console: Where (a ``rich.console.Console``); standard output by default.
    """

    def __init__(self, monitor: CallMonitor, console: Console | None = None) -> None:
        from rich.console import Console

        self.monitor = monitor
        self.console = console if console is not None else Console(highlight=False)
        self._task: asyncio.Task[None] | None = None
        self._live: Any = None

    @property
    def interactive(self) -> bool:
        """Whether the output is a terminal (a live table) or not (a line per second)."""
        return bool(self.console.is_terminal)

    async def __aenter__(self) -> Self:
        if self.interactive:
            from rich.live import Live

            # Redrawn by a task on the event loop, not by rich's thread: the
            # monitor changes on the loop, so it is read there too.
            self._live = Live(self.monitor.render(), console=self.console, auto_refresh=False)
            self._live.start(refresh=True)
            self._task = asyncio.get_running_loop().create_task(self._frames(self._live))
        else:
            self._task = asyncio.get_running_loop().create_task(self._lines())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._live is not None:
            self._live.update(self.monitor.render(), refresh=True)
            self._live.stop()
            self._live = None

    async def _frames(self, live: Any) -> None:
        while True:
            await asyncio.sleep(0.25)  # four frames a second, on the loop
            live.update(self.monitor.render(), refresh=True)

    async def _lines(self) -> None:
        while True:
            await asyncio.sleep(1.0)  # a line per second is the point, not a wait for an event
            self.console.print(self.monitor.status_line(), soft_wrap=True)


def _with_breaks(levels: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The points of a level line, with a gap (NaN) wherever nothing was heard for a while."""
    times: list[float] = []
    values: list[float] = []
    for at, level in levels:
        if times and at - times[-1] > 1.5 * BIN:
            times.append(times[-1] + BIN)
            values.append(float("nan"))
        times.append(at)
        values.append(level)
    return times, values


def plot_timeline(
    monitor: CallMonitor, target: Path | BinaryIO, *, title: str = "rxvoice call"
) -> None:
    """Draw the call as a PNG: per-user levels over time, speech spans, DAVE epoch changes.

    Uses matplotlib's Agg backend (no display needed).

    Args:
        monitor: The monitor of the call (after :meth:`CallMonitor.finish`).
        target: The PNG to write: a path (its folder must exist) or a file
            open for binary writing (e.g. from
            :func:`rxvoice.operators._timeline.open_new`, never replacing a file).
        title: The figure's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = monitor.rows()
    end = max(
        [monitor.elapsed]
        + [t for u in users for t, _ in u.levels]
        + [e for u in users for _, e in u.spans if e is not None]
    )
    figure, (levels_ax, spans_ax) = plt.subplots(
        2,
        1,
        figsize=(11, 3.2 + 0.45 * max(1, len(users))),
        sharex=True,
        gridspec_kw={"height_ratios": [2.2, max(1.0, 0.45 * len(users))]},
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, stats in enumerate(users):
        color = colors[i % len(colors)]
        if stats.levels:
            levels_ax.plot(
                *_with_breaks(stats.levels), color=color, linewidth=1.0, label=stats.name
            )
        for start, stop in stats.spans:
            spans_ax.broken_barh(
                [(start, (stop if stop is not None else end) - start)],
                (i - 0.35, 0.7),
                color=color,
            )
    for change in monitor.epochs:
        for ax in (levels_ax, spans_ax):
            ax.axvline(change.time, color="0.45", linestyle="--", linewidth=0.8)
        levels_ax.annotate(
            f"epoch {change.epoch}\n{change.members} in group",
            (change.time, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize=7,
            color="0.3",
        )
    levels_ax.set_ylim(FLOOR_DB, 0)
    levels_ax.set_ylabel("level (dBFS)")
    levels_ax.set_title(title, loc="left")
    if users:
        levels_ax.legend(loc="lower right", fontsize=8, ncol=min(4, len(users)))
    spans_ax.set_yticks(range(len(users)), [u.name for u in users])
    spans_ax.set_ylim(-0.6, len(users) - 0.4)
    spans_ax.invert_yaxis()
    spans_ax.set_xlabel("call time (s)")
    spans_ax.set_xlim(0, max(end, 1.0))
    spans_ax.set_title(
        "speaking (voice activity); dashed: DAVE epoch changes", loc="left", fontsize=9
    )
    for ax in (levels_ax, spans_ax):
        ax.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(target, dpi=110, format="png")
    plt.close(figure)
