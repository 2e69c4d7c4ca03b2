"""The connection while it runs: one :class:`Run` from ``connect()`` to its end.

A run owns its task, the future ``connect()`` waits on, the watch on the
shard's voice dispatches and the current :class:`~rxvoice._voice.session.Session`.
It replaces WebSockets as the close policy says: a resume keeps the session, a
new session replaces it (fresh credentials), a final close ends the run. The
connection holds at most one run; stopping it releases everything it owns.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from rxvoice._voice.session import Reconnect, Session
from rxvoice.errors import ConnectionClosed, UsageError
from rxvoice.events import ConnectionState, Disconnected
from rxvoice.protocol.closecodes import ClosePolicy, close_error, close_policy, describe_close
from rxvoice.protocol.session import VoiceServerInfo, voice_url

if TYPE_CHECKING:
    from rxvoice.connection import Connection

__all__ = ["Run"]


class Run:
    """One run of a :class:`~rxvoice.Connection` (see the module docstring).

    Create it on the event loop, make it the connection's current run, then
    :meth:`start` it.

    Args:
        conn: The connection.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self.session: Session | None = None
        self.readies = 0  # sessions that got ready, resumes included
        # Why the current WebSocket was dropped from our side, when not its close code.
        self.close_reason: str | None = None
        self._watch = conn._credentials.watch()

    @property
    def current(self) -> bool:
        """Whether this run is still the connection's (not stopped or finished)."""
        return self.conn._run is self

    def start(self) -> None:
        """Start the run's task."""
        self.task = asyncio.get_running_loop().create_task(self._main(), name="rxvoice-connection")

    def set_state(self, state: ConnectionState) -> None:
        """Change the connection's state, unless this run is over."""
        if self.current:
            self.conn._set_state(state)

    def renew_ready(self) -> asyncio.Future[None]:
        """The future that resolves at the next ready (for ``reconnect()``)."""
        if self.ready.done():
            self.ready = asyncio.get_running_loop().create_future()
        return self.ready

    def became_ready(self, *, new_session: bool) -> None:
        """A session got ready (Session Description) or resumed (Resumed)."""
        conn = self.conn
        self.readies += 1
        self.set_state(ConnectionState.READY)
        if new_session:
            conn._on_ready.on_next(None)
        else:
            conn._on_connected.on_next(None)
        if not self.ready.done():
            self.ready.set_result(None)

    def stop(self, code: int | None) -> list[asyncio.Task[None]]:
        """Stop now (``force_close``): cancel the tasks, close the sockets, end the session.

        Synchronous: safe from a signal handler.

        Returns:
            The tasks cancelled (``close()`` awaits their end).
        """
        cancelled: list[asyncio.Task[None]] = []
        task = self.task
        if task is not None and not task.done():
            task.cancel()  # the current task too: it stops at its next await
            cancelled.append(task)
        heartbeat = self.conn.web_socket.heartbeat_task
        if heartbeat is not None:
            cancelled.append(heartbeat)
        self.conn.web_socket.abort(code)
        self._release()
        if self.session is not None:
            cancelled += self.session.close()
            self.session = None
        self._fail(ConnectionClosed(code, "closed locally"))
        return cancelled

    # -- the task -----------------------------------------------------------------------

    async def _main(self) -> None:
        conn = self.conn
        try:
            info = await conn._credentials.for_new_session()
        except Exception as exc:  # no credentials: connect() raises it
            self._finish(exc)
            return
        try:
            await self._sessions(info)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug or an unforeseen failure: end visibly and release everything.
            conn.logger.exception("voice connection failed")
            reason = f"internal error: {exc!r}"
            conn._on_disconnected.on_next(Disconnected(None, False, reason))
            self._finish(close_error(None, reason))

    async def _sessions(self, info: VoiceServerInfo) -> None:
        conn = self.conn
        self.session = Session(conn, self, info)
        failures, resume = 0, False
        while self.current:
            readies = self.readies
            code = await self._one_websocket(resume)
            if not self.current:
                return
            if self.readies != readies:
                failures = 0  # this WebSocket got ready: start counting afresh
            policy, reason, moved = await self._policy_after_close(code)
            failures += 1
            if policy is not ClosePolicy.FINAL and failures > conn.max_reconnect_attempts:
                policy, reason = ClosePolicy.FINAL, f"{reason} (gave up after {failures - 1} tries)"
            will_reconnect = policy is not ClosePolicy.FINAL
            conn.logger.info(
                "voice WebSocket closed (%s): %s; %s", code, reason, policy.value.replace("_", " ")
            )
            conn._on_disconnected.on_next(Disconnected(code, will_reconnect, reason))
            if not self.current:
                return  # a subscriber closed the connection
            if not will_reconnect:
                self._finish(close_error(code, reason))
                return
            if failures > 1:
                await asyncio.sleep(min(0.25 * 2 ** (failures - 2), 5.0))
            resume = policy is ClosePolicy.RESUME
            if resume:
                conn.stats.resumes += 1
                continue
            conn.stats.reconnects += 1
            self.set_state(ConnectionState.RECONNECTING)
            info = self._end_session()
            if moved is not None:
                info = moved  # moved or reallocated: the shard brought new credentials
            elif conn.shard is not None:
                try:
                    info = await conn._credentials.request()
                except (TimeoutError, UsageError) as exc:
                    conn.logger.warning("could not get new voice credentials: %s", exc)
            self.session = Session(conn, self, info)

    async def _policy_after_close(
        self, code: int | None
    ) -> tuple[ClosePolicy, str, VoiceServerInfo | None]:
        """Decide what to do after the WebSocket closed with ``code`` (and where to go)."""
        if self.close_reason is not None:
            policy, reason = ClosePolicy.RESUME, self.close_reason
        else:
            policy, reason = close_policy(code), describe_close(code)
        credentials = self.conn._credentials
        if credentials.expecting(code):
            if not credentials.arrived:
                self.set_state(ConnectionState.RECONNECTING)
            moved = await credentials.next_server()
            if moved is None:
                return ClosePolicy.FINAL, reason, None
            return ClosePolicy.NEW_SESSION, "new voice server credentials", moved
        session = self.session
        if policy is ClosePolicy.RESUME and (session is None or not session.gateway.resumable):
            policy = ClosePolicy.NEW_SESSION
        return policy, reason, None

    async def _one_websocket(self, resume: bool) -> int | None:
        """Run one WebSocket from connect to close; return the close code."""
        conn, ws, session = self.conn, self.conn.web_socket, self.session
        assert session is not None
        self.close_reason = None
        self.set_state(ConnectionState.RESUMING if resume else ConnectionState.CONNECTING)
        try:
            await ws.connect(voice_url(session.gateway.info.endpoint), ssl=conn.ssl)
        except OSError as exc:
            conn.logger.warning("voice WebSocket connect failed: %s", exc)
            return None
        if not resume:
            self.set_state(ConnectionState.IDENTIFYING)
        try:
            await conn.send(session.opening_message(resume=resume))
            async for frame in ws.frames():
                await session.on_frame(frame)
        except Reconnect:
            ws.abort()
        except UsageError:
            # The socket was dropped under us (reconnect(), a move, missed ACKs)
            # while a handler was still sending: that is just a close.
            ws.abort()
        finally:
            ws.stop_heartbeat()
        return ws.close_code

    def _end_session(self) -> VoiceServerInfo:
        """Drop the current session (keys, DAVE, buffers, tasks) and its UDP socket."""
        session = self.session
        assert session is not None
        self.session = None
        session.close(flush=True)
        self.conn.udp.close()
        return session.gateway.info

    def _finish(self, error: BaseException) -> None:
        """The run ended by itself (a final close): release everything, report ``error``."""
        if not self.current:
            return
        conn = self.conn
        conn._run = None
        self._release()
        if self.session is not None:
            self._end_session()
        self._fail(error)
        conn._set_state(ConnectionState.CLOSED)

    def _release(self) -> None:
        self.conn.udp.close()
        if self._watch is not None:
            self._watch.dispose()
            self._watch = None

    def _fail(self, error: BaseException) -> None:
        if isinstance(error, ConnectionClosed):
            self.conn._closed_with = error  # what sending raises from now on
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: connect() may have stopped waiting
