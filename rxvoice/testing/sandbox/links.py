"""How the sandbox's servers talk to a peer: a WebSocket, or an in-memory queue.

The gateways' logic is synchronous: a handler takes one frame, updates state
and queues what to send. A :class:`Link` is what it queues into. It keeps the
order of frames and close requests (a close queued after a frame goes out
after that frame), which a server relies on, for example to send op 13 and
then close.

- :class:`WebSocketLink` writes to a ``websockets`` server connection from its
  own task.
- :class:`MemoryLink` hands frames to an in-process peer (a simulated
  speaker) through an :class:`asyncio.Queue`, with no socket at all.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol, TypeVar

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

__all__ = ["Close", "Link", "MemoryLink", "WebSocketLink"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Close:
    """A close request in a link's queue.

    Attributes:
        code: The close code, or ``None`` for an abrupt drop (no close frame).
        reason: The close reason.
    """

    code: int | None
    reason: str = ""


class Link(Protocol):
    """Where a server sends frames to one peer."""

    #: Whether the peer lives in the sandbox's process (a simulated speaker): it
    #: need not heartbeat and is reported as simulated.
    in_process: bool

    def send(self, frame: str | bytes) -> None:
        """Queue a text (``str``) or binary (``bytes``) frame."""
        ...

    def close(self, code: int | None, reason: str = "") -> None:
        """Queue a close with ``code``; ``None`` drops the connection at once."""
        ...


class WebSocketLink:
    """A :class:`Link` over a ``websockets`` server connection.

    Frames are written by a task of their own, in the order they were queued.

    Args:
        ws: The server-side connection.
    """

    in_process = False

    #: Frames queued for a peer that does not read before it is dropped (like a
    #: server would): its session stays resumable and the replay buffer covers it.
    MAX_QUEUED = 4096

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws
        self._queue: asyncio.Queue[str | bytes | Close] = asyncio.Queue()
        self._closing = False
        self._writer = asyncio.get_running_loop().create_task(self._write())

    def __repr__(self) -> str:
        return f"WebSocketLink(remote={self._ws.remote_address!r})"

    def send(self, frame: str | bytes) -> None:
        """Queue a frame; ignored once a close was requested."""
        if self._closing:
            return
        if self._queue.qsize() >= self.MAX_QUEUED:
            logger.warning("peer %s does not read its frames; dropping it", self)
            self.close(None)
            return
        self._queue.put_nowait(frame)

    def close(self, code: int | None, reason: str = "") -> None:
        """Queue a close frame, or abort the TCP connection at once when ``code`` is None."""
        if self._closing:
            return
        self._closing = True
        if code is None:
            self._writer.cancel()
            self._ws.transport.abort()
        else:
            self._queue.put_nowait(Close(code, reason))

    async def finish(self) -> None:
        """Stop the writer task (call when the connection has ended)."""
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    async def _write(self) -> None:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, Close):
                    await self._ws.close(item.code or 1000, item.reason)
                    return
                await self._ws.send(item)
        except ConnectionClosed:
            pass
        except OSError as exc:  # the socket went away under us
            logger.debug("websocket write failed: %s", exc)


class _Inbox(asyncio.Queue[T]):
    """An :class:`asyncio.Queue` whose waiting items can be looked at."""

    def _init(self, maxsize: int) -> None:
        # The deque Queue's own methods use (_init is its hook for subclasses).
        self.waiting: collections.deque[T] = collections.deque()
        self._queue = self.waiting


class MemoryLink:
    """A :class:`Link` to an in-process peer: frames land in :attr:`inbox`.

    A close request arrives in the inbox as a :class:`Close` item, after every
    frame queued before it.
    """

    in_process = True

    def __init__(self) -> None:
        self.inbox: _Inbox[str | bytes | Close] = _Inbox()
        self.closed = False

    def queued(self) -> tuple[str | bytes | Close, ...]:
        """What is in the inbox now, oldest first, without taking it."""
        return tuple(self.inbox.waiting)

    def __repr__(self) -> str:
        return f"MemoryLink(closed={self.closed})"

    def send(self, frame: str | bytes) -> None:
        """Deliver a frame to the peer's inbox; ignored once closed."""
        if not self.closed:
            self.inbox.put_nowait(frame)

    def close(self, code: int | None, reason: str = "") -> None:
        """Deliver a close to the peer's inbox."""
        if not self.closed:
            self.closed = True
            self.inbox.put_nowait(Close(code, reason))
