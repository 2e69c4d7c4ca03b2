"""What several operators share: scheduler time, stream keys, per-stream state, diagnostics."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt
from reactivex import Observable, abc
from reactivex.scheduler import TimeoutScheduler
from reactivex.scheduler.eventloop import AsyncIOScheduler

from rxvoice.events import Diagnostic

logger = logging.getLogger("rxvoice.operators")

PcmArray: TypeAlias = npt.NDArray[np.int16]

RTP_RATE = 48_000
"""RTP timestamps count 48 kHz samples whatever rate the PCM has."""

_In = TypeVar("_In", contravariant=True)
_Out = TypeVar("_Out", covariant=True)
_A = TypeVar("_A", bound="UserItem")
_B = TypeVar("_B")

StreamKey: TypeAlias = "str | tuple[str, int | None]"
"""Whose audio an item is: the user id, or ``("ssrc", ssrc)`` when the user is unknown."""

DiagnosticCallback: TypeAlias = Callable[[Diagnostic], None]


class UserItem(Protocol):
    """Anything that says whose audio it is (frames, gaps, chunks)."""

    @property
    def user_id(self) -> str | None:
        """The user, or ``None``."""
        ...

    @property
    def ssrc(self) -> int | None:
        """The RTP synchronisation source, or ``None``."""
        ...


def stream_key(item: UserItem) -> StreamKey:
    """Key per-user state by user id, falling back to the SSRC when unknown.

    Keying by user (not SSRC) keeps a user's state across an SSRC change.
    """
    user = item.user_id
    return user if user is not None else ("ssrc", item.ssrc)


class LoopClockScheduler(AsyncIOScheduler):
    """RxPY's asyncio scheduler, telling time by the loop's monotonic clock.

    RxPY's schedulers report the wall clock as ``now``, so a clock step (NTP,
    suspend) would stall or burst tick timers. This one reports
    ``loop.time()``, the clock a :class:`rxvoice.Connection` stamps frames with.

    Args:
        loop: The event loop that runs the scheduled actions.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._clock = loop.time

    @property
    def now(self) -> datetime:
        """The loop's time, as RxPY's absolute-time type."""
        return datetime.fromtimestamp(self._clock(), UTC)


class MonotonicTimeoutScheduler(TimeoutScheduler):
    """RxPY's timer-thread scheduler, telling time by ``time.monotonic``."""

    @property
    def now(self) -> datetime:
        """The monotonic clock, as RxPY's absolute-time type."""
        return datetime.fromtimestamp(time.monotonic(), UTC)


def choose_scheduler(
    *candidates: abc.SchedulerBase | None,
) -> abc.SchedulerBase:
    """Return the first scheduler given; else one on the running asyncio loop, else timer threads.

    Inside an asyncio program (where a Connection lives) timers then fire on the
    event loop, in the same thread as the values, instead of on timer threads.
    The defaults tell time by a monotonic clock (the loop's, in asyncio).
    """
    for candidate in candidates:
        if candidate is not None:
            return candidate
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return MonotonicTimeoutScheduler.singleton()
    return LoopClockScheduler(loop)


def now_of(scheduler: abc.SchedulerBase) -> float:
    """The scheduler's current time in seconds (virtual time under a TestScheduler)."""
    return scheduler.to_seconds(scheduler.now)


IDLE_FORGET = 60.0
"""Seconds without a packet after which an SSRC's state (jitter buffer, decoder) is forgotten."""

_K = TypeVar("_K")


class IdleStreams(Generic[_K]):
    """Tells which streams have been quiet for a while, so their state can go.

    SSRCs churn (every reconnect brings a new one; users leave): a long-lived
    pipeline must not keep a jitter buffer or an Opus decoder for each one it
    ever saw. A forgotten stream that comes back simply starts afresh.

    Args:
        after: Seconds of silence before a stream counts as gone; streams are
            swept at most once per ``after``, so the cost per item is O(1).
    """

    __slots__ = ("_after", "_next_sweep", "_seen")

    def __init__(self, after: float = IDLE_FORGET) -> None:
        self._after = after
        self._seen: dict[_K, float] = {}
        self._next_sweep = float("-inf")

    def touch(self, key: _K, now: float) -> bool:
        """Note that ``key`` was active at ``now``.

        Returns:
            Whether ``key`` comes back after a quiet spell longer than
            ``after`` (its state should start afresh, swept or not).
        """
        seen = self._seen.get(key)
        self._seen[key] = now
        return seen is not None and now - seen > self._after

    def expired(self, now: float) -> list[_K]:
        """Return (and stop tracking) the streams quiet for more than ``after`` seconds."""
        if self._next_sweep - self._after <= now < self._next_sweep:
            return []  # swept less than ``after`` ago (a clock gone back sweeps too)
        self._next_sweep = now + self._after
        horizon = now - self._after
        gone = [key for key, seen in self._seen.items() if seen < horizon]
        for key in gone:
            del self._seen[key]
        return gone


class Reporter:
    """Counts survivable problems and hands them to an optional callback.

    Args:
        stats: A counter to add to, by :attr:`Diagnostic.kind`.
        on_diagnostic: Called with each problem; may raise, and then the
            pipeline errors (the caller routes the exception to ``on_error``).
    """

    __slots__ = ("_callback", "_lock", "_stats")

    def __init__(
        self, stats: Counter[str] | None, on_diagnostic: DiagnosticCallback | None
    ) -> None:
        self._stats = stats
        self._callback = on_diagnostic
        self._lock = threading.Lock()  # decoders on a thread pool report concurrently

    def __call__(
        self, kind: str, detail: str, ssrc: int | None = None, user_id: str | None = None
    ) -> None:
        """Count one problem and report it (the callback's exceptions propagate)."""
        if self._stats is not None:
            with self._lock:
                self._stats[kind] += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s (ssrc=%s, user=%s): %s", kind, ssrc, user_id, detail)
        if self._callback is not None:
            self._callback(Diagnostic(kind, detail, ssrc, user_id))


class StreamProcessor(Protocol[_In, _Out]):
    """The state of one user's (or one SSRC's) stream inside a per-stream operator."""

    def push(self, item: _In) -> Iterable[_Out]:
        """Take one item of this stream; return what to emit now."""
        ...

    def flush(self) -> Iterable[_Out]:
        """The source completed: return what is still held."""
        ...


def per_stream(
    new: Callable[[_A], StreamProcessor[_A, _B]],
) -> Callable[[Observable[_A]], Observable[_B]]:
    """Build an operator that keeps one :class:`StreamProcessor` per user.

    Items are routed by :func:`stream_key`; ``new(first_item)`` creates a
    stream's processor. On completion every processor is flushed, in order of
    first appearance. An exception from a processor goes to ``on_error``.
    Shared state is guarded by a lock, as RxPY's operators do.
    """

    def operator(source: Observable[_A]) -> Observable[_B]:
        def subscribe(
            observer: abc.ObserverBase[_B], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            lock = threading.RLock()
            streams: dict[StreamKey, StreamProcessor[_A, _B]] = {}

            def on_next(item: _A) -> None:
                with lock:
                    key = stream_key(item)
                    try:
                        processor = streams.get(key)
                        if processor is None:
                            processor = streams[key] = new(item)
                        out = list(processor.push(item))
                    except Exception as error:  # a user's bad argument or data
                        observer.on_error(error)
                        return
                    for value in out:
                        observer.on_next(value)

            def on_completed() -> None:
                with lock:
                    try:
                        out = [value for p in streams.values() for value in p.flush()]
                    except Exception as error:
                        observer.on_error(error)
                        return
                    streams.clear()
                    for value in out:
                        observer.on_next(value)
                    observer.on_completed()

            return source.subscribe(on_next, observer.on_error, on_completed, scheduler=scheduler)

        return Observable(subscribe)

    return operator
