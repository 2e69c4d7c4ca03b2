"""Helpers for integration tests: record observables and await conditions on them."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from reactivex import Observable
from websockets.asyncio.client import ClientConnection

import rxvoice.connection
from rxvoice.connection import Connection
from rxvoice.events import AudioFrame, ConnectionState
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


async def talk_until(speaker: Speaker, stop: asyncio.Event, tail: int = 10) -> None:
    """Talk without a break until ``stop`` is set, then ``tail`` frames more."""
    while not stop.is_set():
        await speaker.talk(5)
    await speaker.talk(tail)


def library_tasks() -> set[asyncio.Task[Any]]:
    """Unfinished tasks running rxvoice's connection or transport code, whatever their names.

    The shard's own tasks (``rxvoice-shard*``) are left out: it outlives connections.
    """
    package = Path(rxvoice.connection.__file__).parent
    roots = (Path(rxvoice.connection.__file__), package / "_voice", package / "transport")
    tasks = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        where = Path(code.co_filename) if code is not None else None
        if (
            not task.done()
            and not task.get_name().startswith("rxvoice-shard")
            and where is not None
            and any(where.is_relative_to(r) or where == r for r in roots)
        ):
            tasks.add(task)
    return tasks


class Sockets:
    """Every socket a connection opens, recorded as its state changes (sessions come and go)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.udp: list[socket.socket] = []
        self.websockets: dict[ClientConnection, Any] = {}  # with its TCP socket
        self._subscription = conn.state.subscribe(self._look)  # the current state replays

    def _look(self, _: ConnectionState) -> None:
        udp, ws = self.conn.udp._sock, self.conn.web_socket._ws
        if udp is not None and udp not in self.udp:
            self.udp.append(udp)
        if ws is not None and ws not in self.websockets:
            self.websockets[ws] = ws.transport.get_extra_info("socket")

    async def all_closed(self) -> bool:
        """Whether every socket recorded is closed (waits for each WebSocket's TCP close)."""
        self._subscription.dispose()
        for ws in self.websockets:
            await ws.wait_closed()
        sockets = [*self.udp, *self.websockets.values()]
        return all(s.fileno() == -1 for s in sockets)


async def force_close_releases_everything(conn: Connection, sockets: Sockets) -> None:
    """``force_close()`` ends every task of the connection and closes every socket it used."""
    running = library_tasks()
    conn.force_close()
    assert conn.current_state is ConnectionState.CLOSED
    if running:
        await asyncio.wait(running)
    assert library_tasks() == set()
    assert sockets.udp and sockets.websockets  # it did record something
    assert await sockets.all_closed()
    assert conn.rtp is None and conn.dave is None and not conn.jitters
