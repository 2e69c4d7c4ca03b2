"""The ``to_async_iterable`` bridge: ``async for`` over an observable."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Generic, Self, TypeVar

from reactivex import Observable, abc

from rxvoice.errors import UsageError

_T = TypeVar("_T")


class ObservableIterator(Generic[_T]):
    """An async iterator over an observable, subscribed on the first ``__anext__``.

    Items are queued on the event loop of the first ``__anext__``, every
    notification through ``call_soon_threadsafe`` so that items from other
    threads and the end of the stream keep their order.
    ``on_error`` raises the error from ``__anext__``; ``on_completed`` ends
    the iteration. Leaving early: ``await it.aclose()`` or ``async with``.

    Args:
        source: The observable to iterate.
        max_pending: The most items queued for a slow consumer; beyond it the
            oldest are dropped (counted in :attr:`dropped`). ``None``: unbounded.
    """

    def __init__(self, source: Observable[_T], max_pending: int | None = None) -> None:
        if max_pending is not None and max_pending < 1:
            raise UsageError(f"max_pending must be >= 1, got {max_pending}")
        self._source = source
        self._max_pending = max_pending
        self._items: deque[_T] = deque()
        self._done = False
        self._error: Exception | None = None
        self._wake: asyncio.Event | None = None
        self._subscription: abc.DisposableBase | None = None
        self._closed = False
        self.dropped = 0

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> _T:
        if self._subscription is None and not self._closed:
            self._subscribe()
        wake = self._wake
        while True:
            if self._items:
                return self._items.popleft()
            if self._done or self._closed or wake is None:
                self._dispose()
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                raise StopAsyncIteration
            wake.clear()
            await wake.wait()

    async def aclose(self) -> None:
        """Unsubscribe and drop what is queued; the iteration ends (a pending ``__anext__`` too)."""
        self._closed = True
        self._items.clear()
        self._dispose()
        if self._wake is not None:
            self._wake.set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _subscribe(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake = asyncio.Event()

        def on_loop(action: Callable[[], None]) -> None:
            # Always through the loop's queue, even on its own thread: items
            # from a decoder thread and a completion on the loop keep their order.
            if not loop.is_closed():
                loop.call_soon_threadsafe(action)

        def push(value: _T) -> None:
            if self._done or self._closed:
                return
            items = self._items
            if self._max_pending is not None and len(items) >= self._max_pending:
                items.popleft()
                self.dropped += 1
            items.append(value)
            wake.set()

        def end(error: Exception | None) -> None:
            if not self._done:
                self._done = True
                self._error = error
                wake.set()

        self._subscription = self._source.subscribe(
            lambda value: on_loop(lambda: push(value)),
            lambda error: on_loop(lambda: end(error)),
            lambda: on_loop(lambda: end(None)),
        )

    def _dispose(self) -> None:
        if self._subscription is not None:
            self._subscription.dispose()

    def __del__(self) -> None:
        # Abandoned mid-stream (a ``break`` without aclose): stop the upstream.
        subscription = getattr(self, "_subscription", None)
        if subscription is not None:
            subscription.dispose()


def to_async_iterable_(
    max_pending: int | None,
) -> Callable[[Observable[_T]], ObservableIterator[_T]]:
    if max_pending is not None and max_pending < 1:
        raise UsageError(f"max_pending must be >= 1, got {max_pending}")

    def operator(source: Observable[_T]) -> ObservableIterator[_T]:
        return ObservableIterator(source, max_pending)

    return operator


__all__ = ["ObservableIterator", "to_async_iterable_"]
