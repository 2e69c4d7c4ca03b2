"""Hot event streams whose subscribers cannot break each other or the connection."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, TypeVar

from reactivex import abc
from reactivex.subject import BehaviorSubject, Subject

__all__ = ["EventStream", "StateStream"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class EventStream(Subject[T]):
    """A :class:`reactivex.subject.Subject` that isolates its subscribers.

    A plain Subject lets an exception raised in one subscriber's ``on_next``
    escape into the code that emitted the value (here: the receive loop) and
    skips the remaining subscribers. This one logs the exception, saying
    whether that subscriber's pipeline ended (an error that reached a
    ``subscribe`` without ``on_error``: RxPY then disposes the pipeline) or
    stays subscribed (a callback raised), and carries on, so one faulty
    subscriber cannot end the connection or another pipeline.
    Errors inside an operator chain still reach that chain's ``on_error``.
    """

    def _on_next_core(self, value: T) -> None:
        with self.lock:
            observers = self.observers.copy()
        for observer in observers:
            try:
                observer.on_next(value)
            except Exception:
                _report(self, observer)

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
                    if not _report(self, observer):
                        observers = [o for o in observers if o is not observer]


def _report(stream: Subject[Any], observer: abc.ObserverBase[Any]) -> bool:
    """Log what a subscriber's exception did: ended its pipeline, or not.

    An exception reaches the stream when a callback raises, or when an error
    reaches a ``subscribe`` without ``on_error`` (RxPY raises it there). In
    the second case RxPY has already disposed that pipeline.

    Returns:
        Whether the observer is still subscribed.
    """
    with stream.lock:
        subscribed = observer in stream.observers
    if subscribed:
        logger.exception(
            "a subscriber raised in on_next; it stays subscribed and gets the next values"
        )
    else:
        logger.exception(
            "a subscriber's pipeline ended with this error (it reached a subscribe() without "
            "on_error): that pipeline was unsubscribed and gets no more values; the other "
            "subscribers carry on. Pass on_error= to subscribe() to handle it"
        )
    return subscribed


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
                _report(self, observer)
