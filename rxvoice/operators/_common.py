"""What several operators share: scheduler time, stream keys, diagnostics."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Protocol, TypeAlias

import numpy as np
import numpy.typing as npt
from reactivex import abc
from reactivex.scheduler import TimeoutScheduler
from reactivex.scheduler.eventloop import AsyncIOScheduler

from rxvoice.events import Diagnostic

logger = logging.getLogger("rxvoice.operators")

PcmArray: TypeAlias = npt.NDArray[np.int16]

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


def choose_scheduler(
    *candidates: abc.SchedulerBase | None,
) -> abc.SchedulerBase:
    """Return the first scheduler given; else the running asyncio loop's, else RxPY's default.

    Inside an asyncio program (where a Connection lives) timers then fire on the
    event loop, in the same thread as the values, instead of on timer threads.
    """
    for candidate in candidates:
        if candidate is not None:
            return candidate
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return TimeoutScheduler.singleton()
    return AsyncIOScheduler(loop)


def now_of(scheduler: abc.SchedulerBase) -> float:
    """The scheduler's current time in seconds (virtual time under a TestScheduler)."""
    return scheduler.to_seconds(scheduler.now)


class Reporter:
    """Counts survivable problems and hands them to an optional callback.

    Args:
        stats: A counter to add to, by :attr:`Diagnostic.kind`.
        on_diagnostic: Called with each problem; may raise, and then the
            pipeline errors (the caller routes the exception to ``on_error``).
    """

    __slots__ = ("_callback", "_stats")

    def __init__(
        self, stats: Counter[str] | None, on_diagnostic: DiagnosticCallback | None
    ) -> None:
        self._stats = stats
        self._callback = on_diagnostic

    def __call__(
        self, kind: str, detail: str, ssrc: int | None = None, user_id: str | None = None
    ) -> None:
        """Count one problem and report it (the callback's exceptions propagate)."""
        if self._stats is not None:
            self._stats[kind] += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s (ssrc=%s, user=%s): %s", kind, ssrc, user_id, detail)
        if self._callback is not None:
            self._callback(Diagnostic(kind, detail, ssrc, user_id))
