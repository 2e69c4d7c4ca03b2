"""``VoiceProtocol`` for discord.py and its forks: an rxvoice Connection as a voice client.

discord.py, py-cord, nextcord and disnake share one extension point for
voice: a ``VoiceProtocol`` subclass passed to ``channel.connect(cls=...)``.
The library creates it, calls ``connect()``, forwards our own
``VOICE_STATE_UPDATE`` and every ``VOICE_SERVER_UPDATE`` of the guild to its
two hooks, and keeps it as ``guild.voice_client`` until ``cleanup()``.
:class:`RxVoiceProtocol` implements those hooks over a :class:`DispatchShard`
and a :class:`~rxvoice.Connection`; :func:`voice_client_class` combines it
with a library's ``VoiceProtocol`` (``rxvoice.discordpy.RxVoiceClient`` is
the one for discord.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from types import ModuleType
from typing import Any, ClassVar, TypeVar, cast

import numpy as np
from reactivex.disposable import CompositeDisposable

from rxvoice.adapters.shard import DispatchShard
from rxvoice.audio.opus import CHANNELS, Application, OpusEncoder
from rxvoice.connection import Connection
from rxvoice.errors import ConnectionClosed, UsageError
from rxvoice.events import ConnectionState
from rxvoice.shard.base import VoiceStateUpdate

__all__ = ["RxVoiceProtocol", "voice_client_class"]

V = TypeVar("V", bound="RxVoiceProtocol")

logger = logging.getLogger(__name__)

# Connection arguments the voice client sets itself.
_RESERVED = frozenset(
    {"guild_id", "channel_id", "user_id", "shard", "session_id", "token", "endpoint"}
)
_STATE_FIELDS = ("guild_id", "channel_id", "user_id", "session_id")
_SERVER_FIELDS = ("guild_id", "token", "endpoint")
_LATENCY_SAMPLES = 20  # heartbeats averaged by average_latency, as discord.py does
_PCM_FRAME_BYTES = 960 * CHANNELS * 2  # 20 ms of 48 kHz stereo int16, an AudioSource's read()
_BACKGROUND: set[asyncio.Task[Any]] = set()  # close() tasks spawned by cleanup()
_APPLICATIONS: dict[str, Application] = {
    "audio": "audio",
    "voip": "voip",
    "lowdelay": "restricted_lowdelay",
}


class _Playback:
    """One ``play()``: its source (swappable), pause switch and task."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.unpaused = asyncio.Event()
        self.unpaused.set()
        self.task: asyncio.Task[None] | None = None

    async def frames(self, encoder: OpusEncoder | None) -> AsyncIterator[bytes]:
        """Opus frames read from the source (encoded when it gives PCM), until it ends."""
        while True:
            await self.unpaused.wait()
            data: bytes = await asyncio.to_thread(self.source.read)
            if not data:
                return
            if encoder is None:
                yield data
                continue
            # A short last frame is padded with silence.
            pcm = np.frombuffer(data[:_PCM_FRAME_BYTES].ljust(_PCM_FRAME_BYTES, b"\0"), np.int16)
            yield encoder.encode(pcm.reshape(-1, CHANNELS))


class RxVoiceProtocol:
    """The library-independent half of an rxvoice voice client.

    Combined with a library's ``VoiceProtocol`` by :func:`voice_client_class`
    (for discord.py: ``rxvoice.discordpy.RxVoiceClient``). The library creates
    it through ``channel.connect(cls=...)``; pass options with
    :meth:`with_options`.

    Args:
        client: The library's client (given by the library).
        channel: The voice channel to join (given by the library).
        setup: Called with the new voice client before it joins: subscribe to
            :attr:`connection` there to see the whole handshake.
        **options: More arguments for :class:`~rxvoice.Connection` (``ssl``,
            ``jitter_latency``, ``max_dave_protocol_version``, ...).

    Attributes:
        connection: The rxvoice :class:`~rxvoice.Connection`, with every
            observable; it exists before the join starts.
        shard: The :class:`DispatchShard` the library's gateway feeds.
    """

    #: The library module (``discord``, ``disnake``, ``nextcord``).
    library: ClassVar[ModuleType]
    client: Any
    channel: Any

    def __init__(
        self,
        client: Any,
        channel: Any,
        /,
        *,
        setup: Callable[[Any], object] | None = None,
        **options: Any,
    ) -> None:
        _check_options(options)
        # The library's VoiceProtocol.__init__ (sets client and channel).
        _voice_protocol(type(self).library).__init__(self, client, channel)
        self.shard = DispatchShard(self._change_voice_state, user_id=self._our_user_id)
        self.connection = Connection(
            guild_id=channel.guild.id, channel_id=channel.id, shard=self.shard, **options
        )
        self._latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        self._cleaned_up = False
        self._playback: _Playback | None = None
        self.connection.on_heartbeat.subscribe(self._latencies.append)
        self.connection.state.subscribe(self._on_state)
        if setup is not None:
            setup(self)

    @classmethod
    def with_options(
        cls: type[V], *, setup: Callable[[V], object] | None = None, **options: Any
    ) -> Callable[[Any, Any], V]:
        """A ``cls=`` for ``channel.connect`` that creates voice clients with these options.

        Args:
            setup: See the class arguments.
            **options: Arguments for :class:`~rxvoice.Connection`.

        Raises:
            UsageError: For an argument the voice client sets itself (ids,
                credentials, shard), or one ``Connection`` does not take.

        Example:
            >>> voice = RxVoiceClient.with_options(ssl=ctx)   # doctest: +SKIP
            >>> vc = await channel.connect(cls=voice)
        """
        _check_options(options)

        def make(client: Any, channel: Any) -> V:
            return cls(client, channel, setup=setup, **options)

        return make

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} guild_id={self.connection.guild_id} "
            f"channel_id={self.connection.channel_id} "
            f"state={self.connection.current_state.value}>"
        )

    # -- what discord.py users expect ---------------------------------------------------

    @property
    def guild(self) -> Any:
        """The guild of the voice channel."""
        return self.channel.guild

    @property
    def user(self) -> Any:
        """Our own user (the library's ``ClientUser``)."""
        return self.client.user

    @property
    def latency(self) -> float:
        """Seconds between the last voice heartbeat and its ACK (``inf`` before one)."""
        if not self._latencies or not self.is_connected():
            return float("inf")
        return self._latencies[-1]

    @property
    def average_latency(self) -> float:
        """Average of the last 20 heartbeat round trips, in seconds (``inf`` before one)."""
        if not self._latencies or not self.is_connected():
            return float("inf")
        return sum(self._latencies) / len(self._latencies)

    def is_connected(self) -> bool:
        """Whether the voice connection is ready to send and receive audio."""
        return self.connection.current_state is ConnectionState.READY

    # -- the library's hooks --------------------------------------------------------------

    async def connect(
        self,
        *,
        timeout: float,
        reconnect: bool,
        self_deaf: bool = False,
        self_mute: bool = False,
    ) -> None:
        """Join the channel (the library calls this from ``channel.connect``).

        Args:
            timeout: Seconds for the whole join.
            reconnect: ``False``: the first drop ends the connection (no
                resume, no reconnect, no move).
            self_deaf: Sent with op 4 (also when given to :meth:`with_options`).
            self_mute: Sent with op 4 (also when given to :meth:`with_options`).

        Raises:
            TimeoutError: If the join took longer than ``timeout``.
            rxvoice.errors.ConnectionClosed: If the voice server refused us
                (:class:`~rxvoice.errors.DaveRequired` for 4017).
        """
        conn = self.connection
        # Either asks: with_options() (disnake and nextcord do not pass these) or connect().
        conn.self_deaf, conn.self_mute = conn.self_deaf or self_deaf, conn.self_mute or self_mute
        if not reconnect:
            conn.max_reconnect_attempts = 0
        try:
            await conn.connect(timeout=timeout)
        except Exception:
            # The library cleans up after a timeout only; and op 4 may have put
            # us in the channel although the voice server failed: leave it.
            self.cleanup()
            with contextlib.suppress(Exception):
                await self._change_voice_state(
                    conn.guild_id, None, self_mute=self_mute, self_deaf=self_deaf
                )
            raise
        except BaseException:
            self.cleanup()
            raise

    async def on_voice_state_update(self, data: Any, /) -> None:
        """Our ``VOICE_STATE_UPDATE`` (the library forwards it): follow moves, leaves, kicks."""
        # Libraries forward only our own voice state, so user_id may be left out.
        payload = _payload(data, _STATE_FIELDS, user_id=self.shard.user_id)
        update = self.shard.feed("VOICE_STATE_UPDATE", payload)
        if (
            isinstance(update, VoiceStateUpdate)
            and update.user_id == self.shard.user_id
            and update.channel_id is not None
        ):
            channel = self.guild.get_channel(int(update.channel_id))
            if channel is not None:
                self.channel = channel  # moved (by us or by a moderator)

    async def on_voice_server_update(self, data: Any, /) -> None:
        """The guild's ``VOICE_SERVER_UPDATE`` (the library forwards it)."""
        self.shard.feed("VOICE_SERVER_UPDATE", _payload(data, _SERVER_FIELDS))

    async def disconnect(self, *, force: bool = False) -> None:
        """Leave the channel (op 4), close the connection and :meth:`cleanup`.

        Nothing to do once this client ended (after a kick, or a first
        ``disconnect``): a newer voice client of the guild is left alone.

        Args:
            force: Accepted for the library's signature: a live client always
                leaves, connected or not.
        """
        if self._cleaned_up:
            return
        self.stop()
        try:
            await self.connection.disconnect()
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        """Forget this voice client: the library's cache entry, the connection, the shard.

        Idempotent; called by :meth:`disconnect` and when the connection ends on
        its own (kicked, or closed by the server for good). Completes the
        connection's observables (shortly after, on the event loop).
        """
        if self._cleaned_up:
            return
        self._cleaned_up = True
        self.stop()
        if self.guild.voice_client is self:  # a newer voice client is not ours to remove
            _voice_protocol(type(self).library).cleanup(self)
        self.connection.force_close()
        self.shard.close()
        with contextlib.suppress(RuntimeError):  # no running loop: nobody to complete for
            task = asyncio.get_running_loop().create_task(self.connection.close())
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    async def move_to(self, channel: Any, *, timeout: float = 30.0) -> None:
        """Move to another voice channel of the guild (``None`` disconnects).

        Returns once the connection is ready in the new channel.

        Raises:
            TimeoutError: If the move did not complete in ``timeout`` seconds.
            rxvoice.errors.ConnectionClosed: If the connection ended instead.
        """
        if channel is None:
            await self.disconnect()
            return
        if str(channel.id) == self.connection.channel_id:
            return
        loop = asyncio.get_running_loop()
        moved: asyncio.Future[None] = loop.create_future()

        def on_ready(_: None) -> None:
            if not moved.done() and self.connection.channel_id == str(channel.id):
                moved.set_result(None)

        def on_state(state: ConnectionState) -> None:
            if state is ConnectionState.CLOSED and not moved.done():
                moved.set_exception(ConnectionClosed(None, "the voice connection ended"))

        subscription = CompositeDisposable(
            self.connection.on_ready.subscribe(on_ready), self.connection.state.subscribe(on_state)
        )
        try:
            await self.shard.update_voice_state(
                self.connection.guild_id,
                str(channel.id),
                self_mute=self.connection.self_mute,
                self_deaf=self.connection.self_deaf,
            )
            await asyncio.wait_for(moved, timeout)
        finally:
            subscription.dispose()

    # -- sending ------------------------------------------------------------------------

    async def send_opus(self, frame: bytes) -> None:
        """Send one 20 ms Opus frame (see :meth:`rxvoice.Connection.send_opus`)."""
        await self.connection.send_opus(frame)

    async def play_opus(
        self, frames: Iterable[bytes] | AsyncIterable[bytes], *, stop: bool = True
    ) -> int:
        """Send Opus frames paced at 20 ms (see :meth:`rxvoice.Connection.play_opus`)."""
        return await self.connection.play_opus(frames, stop=stop)

    def play(
        self,
        source: Any,
        *,
        after: Callable[[Exception | None], Any] | None = None,
        application: str = "audio",
        bitrate: int = 128,
        fec: bool = True,
        expected_packet_loss: float = 0.15,
    ) -> None:
        """Play a library ``AudioSource`` (PCM or Opus), as the library's own voice client does.

        Runs on the event loop (``source.read()`` in a worker thread); ``after``
        is called with the error, or ``None``, once the source ends or
        :meth:`stop` is called.

        Args:
            source: An ``AudioSource`` of the library.
            after: Called once when playing ends.
            application: Opus application for PCM sources: ``"audio"``,
                ``"voip"`` or ``"lowdelay"``.
            bitrate: Opus bitrate in kbit/s for PCM sources.
            fec: Opus in-band forward error correction for PCM sources.
            expected_packet_loss: Expected loss (0-1) the encoder prepares for.

        Raises:
            ClientException: (The library's.) Not connected, or already playing.
            TypeError: If ``source`` is not an ``AudioSource``.
            ValueError: If an encoder argument is out of range.
        """
        library = type(self).library
        if not self.is_connected():
            raise library.ClientException("Not connected to voice.")
        if self._playback is not None:
            raise library.ClientException("Already playing audio.")
        if not isinstance(source, library.AudioSource):
            raise TypeError(f"source must be an AudioSource not {type(source).__name__}")
        encoder = None
        if not source.is_opus():
            if application not in _APPLICATIONS:
                raise ValueError(f"application must be one of {sorted(_APPLICATIONS)}")
            try:
                encoder = OpusEncoder(
                    application=_APPLICATIONS[application],
                    bitrate=bitrate * 1000,
                    fec=fec,
                    packet_loss_percent=round(expected_packet_loss * 100),
                )
            except UsageError as exc:
                raise ValueError(str(exc)) from None
        playback = self._playback = _Playback(source)
        playback.task = asyncio.get_running_loop().create_task(
            self._play(playback, encoder, after), name="rxvoice-player"
        )

    @property
    def source(self) -> Any:
        """The ``AudioSource`` being played (settable while playing), or ``None``."""
        return self._playback.source if self._playback is not None else None

    @source.setter
    def source(self, value: Any) -> None:
        if not isinstance(value, type(self).library.AudioSource):
            raise TypeError(f"expected AudioSource not {type(value).__name__}.")
        if self._playback is None:
            raise ValueError("Not playing anything.")
        self._playback.source = value

    def is_playing(self) -> bool:
        """Whether a source is playing (and not paused)."""
        return self._playback is not None and self._playback.unpaused.is_set()

    def is_paused(self) -> bool:
        """Whether a source is paused."""
        return self._playback is not None and not self._playback.unpaused.is_set()

    def pause(self) -> None:
        """Pause playing; :meth:`resume` continues the same talk spurt."""
        if self._playback is not None:
            self._playback.unpaused.clear()

    def resume(self) -> None:
        """Resume a paused source."""
        if self._playback is not None:
            self._playback.unpaused.set()

    def stop(self) -> None:
        """Stop playing; ``after`` is called with ``None``."""
        playback, self._playback = self._playback, None
        if playback is not None and playback.task is not None:
            playback.task.cancel()

    async def _play(
        self,
        playback: _Playback,
        encoder: OpusEncoder | None,
        after: Callable[[Exception | None], Any] | None,
    ) -> None:
        error: Exception | None = None
        try:
            await self.connection.play_opus(playback.frames(encoder))
        except asyncio.CancelledError:
            pass  # stop(): a normal end for `after`
        except Exception as exc:
            logger.exception("playing an audio source failed")
            error = exc
        finally:
            if self._playback is playback:
                self._playback = None
            try:
                playback.source.cleanup()
            except Exception:
                logger.exception("cleaning up an audio source failed")
            if encoder is not None:
                encoder.close()
            if after is not None:
                try:
                    after(error)
                except Exception:
                    logger.exception("the after callback of play() raised")

    # -- internals ----------------------------------------------------------------------

    def _our_user_id(self) -> int | None:
        user = self.client.user
        return None if user is None else int(user.id)

    async def _change_voice_state(
        self, guild_id: str, channel_id: str | None, *, self_mute: bool, self_deaf: bool
    ) -> None:
        guild = self.guild
        channel = None
        if channel_id is not None:
            channel = guild.get_channel(int(channel_id)) or type(self).library.Object(
                id=int(channel_id)
            )
        await guild.change_voice_state(channel=channel, self_mute=self_mute, self_deaf=self_deaf)

    def _on_state(self, state: ConnectionState) -> None:
        # Kicked, moved out for good, or refused by the server: this voice client
        # is over, as the library's own would be.
        if state is ConnectionState.CLOSED and not self._cleaned_up:
            self.cleanup()


def _payload(data: Any, fields: tuple[str, ...], **known: object) -> object:
    """The dispatch as the gateway sent it: a dict, or (py-cord 2.7+) an object with attributes."""
    if isinstance(data, dict):
        return data
    return {**known, **{name: getattr(data, name) for name in fields if hasattr(data, name)}}


@functools.cache
def _voice_package_protocol(library: ModuleType) -> type | None:
    """py-cord 2.7+'s ``discord.voice.VoiceProtocol`` (``discord.VoiceProtocol`` is deprecated)."""
    try:
        voice = importlib.import_module(f"{library.__name__}.voice")
    except ImportError:
        return None  # discord.py, disnake, nextcord
    base = getattr(voice, "VoiceProtocol", None)
    return base if isinstance(base, type) else None


def _voice_protocol(library: ModuleType) -> Any:
    """The library's ``VoiceProtocol`` class."""
    return _voice_package_protocol(library) or getattr(library, "VoiceProtocol", None)


def _check_options(options: dict[str, Any]) -> None:
    reserved = sorted(_RESERVED.intersection(options))
    if reserved:
        raise UsageError(f"the voice client sets {', '.join(reserved)} itself")
    try:  # a misspelt option: at with_options(), not inside the library's connect()
        inspect.signature(Connection).bind_partial(**options)
    except TypeError as exc:
        raise UsageError(f"not a Connection option: {exc}") from None


@functools.cache
def voice_client_class(library: ModuleType) -> type[RxVoiceProtocol]:
    """The rxvoice voice client class for a discord.py-style library.

    Args:
        library: The library's top-level module: ``discord`` (discord.py or
            py-cord), ``nextcord`` or ``disnake``.

    Returns:
        A subclass of :class:`RxVoiceProtocol` and of ``library.VoiceProtocol``,
        the same class on every call for a library.

    Raises:
        UsageError: If ``library`` has no ``VoiceProtocol``.

    Example:
        >>> import disnake                                                    # doctest: +SKIP
        >>> RxVoiceClient = voice_client_class(disnake)
        >>> vc = await channel.connect(cls=RxVoiceClient)
    """
    if library.__name__ == "discord" and _voice_package_protocol(library) is None:
        from rxvoice.discordpy import RxVoiceClient  # discord.py's, statically typed

        return RxVoiceClient
    base = _voice_protocol(library)
    if not isinstance(base, type):
        raise UsageError(f"{library.__name__} has no VoiceProtocol class")
    cls = type("RxVoiceClient", (RxVoiceProtocol, base), {"library": library})
    return cast(type[RxVoiceProtocol], cls)
