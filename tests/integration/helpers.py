"""Helpers for integration tests: record observables and await conditions on them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from reactivex import Observable

from rxvoice.connection import Connection
from rxvoice.events import AudioFrame
from rxvoice.testing.sandbox.speakers import Speaker

T = TypeVar("T")


class Recorder(Generic[T]):
    """Subscribes to an observable and keeps what it emits; lets tests await conditions."""

    def __init__(self, source: Observable[T]) -> None:
        self.items: list[T] = []
        self.completed = False
        self._waiters: list[tuple[Callable[[list[T]], bool], asyncio.Future[None]]] = []
        self._subscription = source.subscribe(self._on_next, on_completed=self._on_completed)

    def _on_next(self, value: T) -> None:
        self.items.append(value)
        self._wake()

    def _on_completed(self) -> None:
        self.completed = True
        self._wake()

    def _wake(self) -> None:
        for predicate, future in list(self._waiters):
            if not future.done() and predicate(self.items):
                future.set_result(None)

    async def wait_for(self, predicate: Callable[[list[T]], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate(items)`` holds (checked on every new item)."""
        if predicate(self.items):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout)
        finally:
            self._waiters.remove(entry)

    async def next(self, timeout: float = 10.0) -> T:
        """Wait for the next item and return it."""
        count = len(self.items)
        await self.wait_for(lambda items: len(items) > count, timeout)
        return self.items[count]

    def dispose(self) -> None:
        self._subscription.dispose()


def count(n: int) -> Callable[[list[Any]], bool]:
    """A predicate: at least ``n`` items."""
    return lambda items: len(items) >= n


def payloads_of(frames: list[AudioFrame], user_id: str) -> dict[int, bytes]:
    """A user's Opus payloads by RTP sequence number."""
    return {f.sequence: f.opus for f in frames if f.user_id == user_id}


async def until_in_group(conn: Connection, user_id: str) -> None:
    """Wait until ``conn``'s DAVE group includes ``user_id`` (already, or at a transition)."""
    epochs = Recorder(conn.on_dave_epoch_transition)  # subscribed before looking: no race
    try:
        dave = conn.dave
        if dave is not None and dave.ready and user_id in dave.members:
            return
        await epochs.wait_for(lambda ts: any(user_id in t.members for t in ts))
    finally:
        epochs.dispose()


async def hear_everything(frames: Recorder[AudioFrame], speaker: Speaker) -> dict[int, bytes]:
    """Wait until ``frames`` holds every frame ``speaker`` sent; return what was sent."""
    expected = {f.sequence: f.opus for f in speaker.sent}
    await frames.wait_for(lambda fs: len(payloads_of(fs, speaker.user_id)) >= len(expected))
    return expected
