"""The voice-gateway WebSocket: connect, move frames, heartbeat, close.

This is the thin I/O shell around :mod:`websockets`; what the frames mean is
decided by :mod:`rxvoice.protocol.gateway` and the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import ssl as ssl_module
from collections.abc import AsyncIterator, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import Frame as WireFrame
from websockets.frames import Opcode

from rxvoice.errors import UsageError

__all__ = ["FRAMES_LOGGER", "MIN_HEARTBEAT_INTERVAL", "WebSocketTransport", "redact"]

MIN_HEARTBEAT_INTERVAL = 0.05
"""Seconds: the shortest heartbeat interval honoured."""

logger = logging.getLogger(__name__)

# A JSON field whose name holds "token" or "secret" (Identify's and Resume's
# token, op 4's secret_key), with its value: a string, an array or a scalar.
_SECRET_FIELD = re.compile(
    rb'("[^"\\]*(?:token|secret)[^"\\]*"\s*:\s*)(?:"(?:[^"\\]|\\.)*"?|\[[^\]]*\]?|[^,}\]\s]+)',
    re.IGNORECASE,
)
_REDACTED = rb'\1"<redacted>"'


def redact(data: bytes) -> bytes:
    """``data`` (a gateway frame's payload) with every token and secret value replaced.

    Works on any text, however truncated or malformed: what looks like a JSON
    field named ``*token*`` or ``*secret*`` loses its value.

    Example:
        >>> redact(b'{"op":7,"d":{"server_id":"1","token":"abc","seq_ack":3}}')
        b'{"op":7,"d":{"server_id":"1","token":"<redacted>","seq_ack":3}}'
    """
    return _SECRET_FIELD.sub(_REDACTED, data)


class _RedactFrames(logging.Filter):
    """Redacts the frames websockets logs (``> TEXT '{"op": 2, ...}'``) before they render.

    The frame is redacted whole, before websockets elides its middle: a token
    never shows, not even its first or last characters.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, WireFrame) for a in args):
            record.args = tuple(_redacted_frame(a) for a in args)
        return True


def _redacted_frame(arg: object) -> object:
    if not isinstance(arg, WireFrame) or arg.opcode not in (Opcode.TEXT, Opcode.BINARY):
        return arg
    data = redact(bytes(arg.data))
    return dataclasses.replace(arg, data=data) if data != arg.data else arg


# websockets logs every frame at DEBUG, Identify (with its token) included: give
# it a logger of its own that stays at INFO even when the application debugs,
# and that redacts tokens and keys when it is turned on.
FRAMES_LOGGER = logging.getLogger("rxvoice.transport.frames")
FRAMES_LOGGER.setLevel(logging.INFO)
FRAMES_LOGGER.addFilter(_RedactFrames())

Frame = str | bytes


class WebSocketTransport:
    """One voice-gateway WebSocket connection at a time, with its heartbeat task.

    After :meth:`frames` ends, :attr:`close_code` holds the code the server
    closed with, or ``None`` when the connection dropped without a close frame.

    Args:
        name: Names the heartbeat task (``<name>-heartbeat``).
    """

    def __init__(self, *, name: str = "rxvoice") -> None:
        self._name = name  # prefixes the heartbeat task's name
        self._ws: ClientConnection | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.url: str | None = None

    @property
    def is_open(self) -> bool:
        """Whether a WebSocket is connected."""
        return self._ws is not None

    async def connect(
        self,
        url: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        timeout: float = 10.0,
        max_size: int = 1 << 20,
    ) -> None:
        """Open the WebSocket.

        Args:
            url: ``wss://host:port/?v=8`` (``ws://`` for plain loopback servers).
            ssl: The TLS context; ``None`` uses the system's trust store for ``wss``.
            timeout: Seconds allowed for the TCP, TLS and HTTP handshakes.
            max_size: The largest message accepted, in bytes.

        Raises:
            UsageError: If a WebSocket is already open.
            OSError: If the connection or its handshake fails.
        """
        if self._ws is not None:
            raise UsageError("voice WebSocket is already open")
        self.close_code, self.close_reason, self.url = None, "", url
        kwargs: dict[str, object] = {
            "open_timeout": timeout,
            "max_size": max_size,
            "compression": None,
            # Heartbeating is the gateway protocol's job (op 3 / op 1), not WebSocket pings'.
            "ping_interval": None,
            "logger": FRAMES_LOGGER,
        }
        if url.startswith("wss://"):
            kwargs["ssl"] = ssl if ssl is not None else ssl_module.create_default_context()
        try:
            self._ws = await connect(url, **kwargs)  # type: ignore[arg-type]
        except (InvalidHandshake, InvalidURI) as exc:
            raise OSError(f"WebSocket handshake with {url} failed: {exc}") from exc

    async def frames(self) -> AsyncIterator[Frame]:
        """Yield received frames (``str`` for text, ``bytes`` for binary) until the close."""
        ws = self._ws
        if ws is None:
            raise UsageError("voice WebSocket is not open")
        try:
            async for frame in ws:
                yield frame
        except ConnectionClosed:
            pass
        finally:
            if ws is self._ws:
                received = ws.protocol.close_rcvd
                self.close_code = received.code if received is not None else None
                self.close_reason = received.reason if received is not None else ""
                self._release()

    async def send(self, frame: Frame) -> bool:
        """Send one frame; a connection that is closing drops it.

        Returns:
            Whether it was sent (``False``: the connection was closing).

        Raises:
            UsageError: If no WebSocket is open.
        """
        ws = self._ws
        if ws is None:
            raise UsageError("WebSocket is not open")
        try:
            await ws.send(frame)
        except ConnectionClosed:
            return False
        return True

    @property
    def heartbeat_task(self) -> asyncio.Task[None] | None:
        """The heartbeat task while it runs (stopping cancels it; the caller may await it)."""
        return self._heartbeat

    def start_heartbeat(
        self,
        interval: float,
        beat: Callable[[], Frame | None],
        *,
        first_delay: float | None = None,
    ) -> None:
        """Call ``beat`` every ``interval`` seconds and send what it returns.

        ``beat`` returns ``None`` to send nothing this time (it may close the
        connection itself, e.g. after missed ACKs). An interval below
        :data:`MIN_HEARTBEAT_INTERVAL` (a server's mistake) is raised to it, so
        a bad Hello cannot make the client beat in a tight loop.

        Args:
            interval: Seconds between beats.
            beat: Makes each heartbeat frame.
            first_delay: Seconds before the first beat (the main gateway wants
                ``interval * random()``); ``interval`` by default.
        """
        self.stop_heartbeat()
        interval = max(interval, MIN_HEARTBEAT_INTERVAL)
        first = interval if first_delay is None else min(max(first_delay, 0.0), interval)
        self._heartbeat = asyncio.get_running_loop().create_task(
            self._heartbeat_loop(interval, first, beat), name=f"{self._name}-heartbeat"
        )

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat task."""
        task, self._heartbeat = self._heartbeat, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the WebSocket gracefully (sends a close frame, waits briefly)."""
        ws = self._ws
        self._release()
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code, reason), 2.0)
            ws.transport.abort()

    def abort(self, code: int | None = None) -> None:
        """Drop the connection now. Synchronous: safe where nothing may be awaited.

        Args:
            code: When given, a close frame with this code is queued first (written
                without waiting for the server's reply); otherwise the TCP
                connection is simply dropped.
        """
        ws = self._ws
        self._release()
        if ws is None:
            return
        if code is None:
            ws.transport.abort()
            return
        try:
            ws.protocol.send_close(code)
            ws.send_data()
        except Exception:
            ws.transport.abort()
        else:
            ws.transport.close()

    def _release(self) -> None:
        self.stop_heartbeat()
        self._ws = None

    async def _heartbeat_loop(
        self, interval: float, first: float, beat: Callable[[], Frame | None]
    ) -> None:
        me = asyncio.current_task()
        delay = first
        while True:
            await asyncio.sleep(delay)
            delay = interval
            if self._heartbeat is not me or self._ws is None:
                return  # stopped (possibly from inside beat()) or the socket is gone
            frame = beat()
            ws = self._ws
            if frame is None or ws is None:
                continue
            try:
                await ws.send(frame)
            except ConnectionClosed:
                return
