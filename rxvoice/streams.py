"""Hot event streams whose subscribers cannot break each other or the connection."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TypeVar

from reactivex.subject import BehaviorSubject, Subject

__all__ = ["EventStream", "StateStream"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class EventStream(Subject[T]):
    """A :class:`reactivex.subject.Subject` that isolates its subscribers.

    A plain Subject lets an exception raised in one subscriber's ``on_next``
    escape into the code that emitted the value (here: the receive loop) and
    skips the remaining subscribers. This one logs the exception and carries on,
    so one faulty callback cannot end the connection or another pipeline.
    Errors inside an operator chain still reach that chain's ``on_error``.
    """

    def _on_next_core(self, value: T) -> None:
        with self.lock:
            observers = self.observers.copy()
        for observer in observers:
            try:
                observer.on_next(value)
            except Exception:
                logger.exception("a subscriber raised in on_next; it keeps its subscription")

    def on_next_all(self, values: Sequence[T]) -> None:
        """Emit ``values`` in order, as many :meth:`on_next` calls would, for less.

        The subscribers are those of the moment of the call (a subscription
        disposed meanwhile gets nothing more); nothing is done when there are none.
        """
        with self.lock:
            self.check_disposed()
            if self.is_stopped or not self.observers:
                return
            observers = self.observers.copy()
        for value in values:
            for observer in observers:
                try:
                    observer.on_next(value)
                except Exception:
                    logger.exception("a subscriber raised in on_next; it keeps its subscription")


class StateStream(BehaviorSubject[T]):
    """A :class:`reactivex.subject.BehaviorSubject` that isolates its subscribers.

    New subscribers receive the current value first (replay of one).
    """

    def _on_next_core(self, value: T) -> None:
        with self.lock:
            observers = self.observers.copy()
            self.value = value
        for observer in observers:
            try:
                observer.on_next(value)
            except Exception:
                logger.exception("a subscriber raised in on_next; it keeps its subscription")
