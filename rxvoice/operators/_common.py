"""What several operators share: scheduler time, stream keys, per-stream state, diagnostics."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, SerialDisposable
from reactivex.scheduler import TimeoutScheduler
from reactivex.scheduler.eventloop import AsyncIOScheduler

from rxvoice.events import Diagnostic, DiagnosticKind
from rxvoice.protocol.receiver import IdleStreams as IdleStreams  # for the operators
from rxvoice.protocol.receiver import Received, VoiceReceiver

logger = logging.getLogger("rxvoice.operators")

PcmArray: TypeAlias = npt.NDArray[np.int16]

RTP_RATE = 48_000
"""RTP timestamps count 48 kHz samples whatever rate the PCM has."""

_In = TypeVar("_In", contravariant=True)
_Out = TypeVar("_Out", covariant=True)
_A = TypeVar("_A", bound="UserItem")
_B = TypeVar("_B")
_T = TypeVar("_T")
_R = TypeVar("_R")

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


def drive_receiver(
    new: Callable[[], VoiceReceiver],
    step: Callable[[VoiceReceiver, _T, float], Received],
    emit: Callable[[Received, abc.ObserverBase[_R]], None],
    *,
    scheduler: abc.SchedulerBase | None = None,
    clock: Callable[[], float] | None = None,
) -> Callable[[Observable[_T]], Observable[_R]]:
    """Build an operator that runs a :class:`VoiceReceiver` on a stream, timed by a scheduler.

    Each subscription gets its own receiver from ``new()``. ``step(receiver,
    item, now)`` hands it one item; ``emit(received, observer)`` passes on what
    it returned (and may raise: a user callback's error ends the pipeline). One
    timer, at :meth:`VoiceReceiver.next_deadline`, drives
    :meth:`VoiceReceiver.poll`; completion flushes the receiver.

    Args:
        new: Makes a receiver.
        step: Feeds one item.
        emit: Passes a result on.
        scheduler: Times the deadlines; defaults to the subscription's scheduler.
        clock: The receiver's time; defaults to the scheduler's.
    """

    def operator(source: Observable[_T]) -> Observable[_R]:
        def subscribe(
            observer: abc.ObserverBase[_R], scheduler_: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            receiver = new()
            timers = choose_scheduler(scheduler, scheduler_)
            # Timer callbacks may run on another thread than the source's
            # (e.g. TimeoutScheduler): one lock serialises state and emissions.
            lock = threading.RLock()
            timer = SerialDisposable()
            due_at: float | None = None
            last = float("-inf")
            stopped = False

            def now(at_least: float = float("-inf")) -> float:
                # The receiver wants a clock that never goes backwards, and a
                # timer may fire a float ulp before its due time.
                nonlocal last
                last = max(last, clock() if clock is not None else now_of(timers), at_least)
                return last

            def handle(received: Callable[[], Received], at: float) -> None:
                nonlocal due_at, stopped
                try:
                    emit(received(), observer)
                except Exception as error:  # a user callback raised: this pipeline fails
                    stopped = True
                    timer.dispose()
                    observer.on_error(error)
                    return
                deadline = receiver.next_deadline()
                if deadline is None or (due_at is not None and due_at <= deadline):
                    return
                due_at = deadline
                timer.disposable = timers.schedule_relative(
                    max(0.0, deadline - at), on_timer, deadline
                )

            def on_timer(_: abc.SchedulerBase, deadline: Any) -> None:
                nonlocal due_at
                with lock:
                    if not stopped:
                        due_at = None
                        at = now(float(deadline))
                        handle(lambda: receiver.poll(at), at)

            def on_next(item: _T) -> None:
                with lock:
                    if not stopped:
                        at = now()
                        handle(lambda: step(receiver, item, at), at)

            def on_error(error: Exception) -> None:
                nonlocal stopped
                with lock:
                    stopped = True
                    timer.dispose()
                    observer.on_error(error)

            def on_completed() -> None:
                nonlocal stopped
                with lock:
                    if stopped:
                        return
                    stopped = True
                    timer.dispose()
                    try:
                        emit(receiver.flush(now()), observer)
                    except Exception as error:
                        observer.on_error(error)
                        return
                    observer.on_completed()

            subscription = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler_)
            return CompositeDisposable(subscription, timer)

        return Observable(subscribe)

    return operator


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
        self, kind: DiagnosticKind, detail: str, ssrc: int | None = None, user_id: str | None = None
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
