"""Sending audio: speaking state (op 5), Opus frames through both encryption layers, pacing.

While the connection comes back (a resume, a new session, a move), nothing
fails: :meth:`Sender.send_opus` drops the frame (counted in
``stats.frames_dropped``: real-time audio cannot wait) and
:meth:`Sender.play_opus` pauses (it takes no frame from its source) until the
connection is ready again, as discord.js's audio player does. Both raise once
the connection is closed for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Iterable
from typing import TYPE_CHECKING

from rxvoice.audio.opus import FRAME_DURATION, SAMPLES_PER_FRAME
from rxvoice.errors import ConnectionClosed, UsageError
from rxvoice.events import ConnectionState, SpeakingFlags
from rxvoice.protocol.gateway import Speaking
from rxvoice.protocol.rtp import SILENCE_FRAME

if TYPE_CHECKING:
    from rxvoice._voice.session import Session
    from rxvoice.connection import Connection

__all__ = ["SILENCE_FRAMES_ON_STOP", "Sender"]

SILENCE_FRAMES_ON_STOP = 5
"""Silence frames sent at the end of a talk spurt (no Opus interpolation artefacts)."""


class Sender:
    """The sending side of one :class:`~rxvoice.Connection` (its methods' implementation).

    The speaking state belongs to the voice session (a resume resets it):
    this object only reads the connection's current session.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def set_speaking(self, flags: int) -> None:
        """See :meth:`rxvoice.Connection.set_speaking`."""
        session = self._conn._session
        if session is None or session.gateway.ssrc is None:
            raise UsageError("not connected")
        session.speaking = SpeakingFlags(flags)
        await self._conn.send(Speaking(speaking=int(flags), ssrc=session.gateway.ssrc, delay=0))

    async def send_opus(self, frame: bytes) -> None:
        """See :meth:`rxvoice.Connection.send_opus`."""
        session = self._sendable()
        if session is not None:
            if not session.speaking:
                await self.set_speaking(SpeakingFlags.MICROPHONE)
            self._send(session, frame)

    async def stop_speaking(self) -> None:
        """See :meth:`rxvoice.Connection.stop_speaking`."""
        for _ in range(SILENCE_FRAMES_ON_STOP):
            session = self._sendable()
            if session is not None:
                self._send(session, SILENCE_FRAME)
            await asyncio.sleep(FRAME_DURATION)
        if self._conn.current_state is ConnectionState.READY:
            await self.set_speaking(SpeakingFlags.NONE)

    async def play_opus(self, frames: Iterable[bytes] | AsyncIterable[bytes], stop: bool) -> int:
        """See :meth:`rxvoice.Connection.play_opus`."""
        loop = asyncio.get_running_loop()
        sent = 0
        deadline = loop.time()

        async def pace(frame: bytes) -> None:
            nonlocal deadline, sent
            if self._sendable(count=False) is None:
                await self._until_ready()  # the connection is coming back: pause
                deadline = loop.time()
            await self.send_opus(frame)
            sent += 1
            deadline += FRAME_DURATION
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                deadline = loop.time()  # we fell behind: do not burst to catch up

        try:
            self._sendable(count=False)  # closed: raise before taking a frame
            if isinstance(frames, AsyncIterable):
                async for frame in frames:
                    await pace(frame)
            else:
                for frame in frames:
                    await pace(frame)
        finally:
            # Also when cancelled or failing midway: end the talk spurt cleanly.
            if stop and sent and self._conn.current_state is ConnectionState.READY:
                await asyncio.shield(self.stop_speaking())
        return sent

    def _sendable(self, *, count: bool = True) -> Session | None:
        """The session to send on, or ``None`` while the connection comes back.

        Args:
            count: Count the frame that cannot be sent now as dropped.

        Raises:
            ConnectionClosed: The connection closed for good.
            UsageError: The connection was never connected.
        """
        conn = self._conn
        session = conn._session
        if (
            session is not None
            and session.rtp is not None
            and session.dave is not None
            and conn.current_state is ConnectionState.READY
        ):
            return session
        if conn._run is None:
            closed = conn._closed_with
            if closed is not None:
                raise ConnectionClosed(closed.code, closed.reason)
            raise UsageError("the connection is not connected: call connect() first")
        if count:
            conn.stats.frames_dropped += 1
        return None

    async def _until_ready(self) -> None:
        """Wait until the connection is ready again, or closed (then the caller raises)."""
        changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_state(state: ConnectionState) -> None:
            if state in (ConnectionState.READY, ConnectionState.CLOSED) and not changed.done():
                changed.set_result(None)

        subscription = self._conn.state.subscribe(on_state)
        try:
            await changed
        finally:
            subscription.dispose()
        self._sendable(count=False)

    def _send(self, session: Session, frame: bytes) -> None:
        rtp, dave = session.rtp, session.dave
        assert rtp is not None and dave is not None
        self._conn.udp.send(rtp.seal_opus(dave.encrypt(frame), samples=SAMPLES_PER_FRAME))
        self._conn.stats.frames_sent += 1
