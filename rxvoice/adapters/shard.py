"""A :class:`~rxvoice.shard.Shard` fed by another library's gateway.

A bot library already holds the one main-gateway session a bot may have, and
with it the bot's voice state: a second session (:class:`~rxvoice.GatewayShard`)
would fight it for that state. :class:`DispatchShard` lets a
:class:`~rxvoice.Connection` use the library's gateway instead. The library
hands it the two voice dispatches as raw payloads (:meth:`DispatchShard.feed`)
and sends op 4 for it (the ``update_voice_state`` coroutine function it was
given); the Connection does the rest: joining, moves, a null endpoint, leaving
and kicks.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from reactivex import Observable

from rxvoice.errors import MalformedMessage, UsageError
from rxvoice.shard.base import VoiceServerUpdate, VoiceStateUpdate, VoiceUpdate
from rxvoice.streams import EventStream

__all__ = ["DispatchShard", "VoiceStateSender"]

logger = logging.getLogger(__name__)

_PARSERS: dict[str, Callable[[object], VoiceUpdate]] = {
    "VOICE_STATE_UPDATE": VoiceStateUpdate.parse,
    "VOICE_SERVER_UPDATE": VoiceServerUpdate.parse,
}
_ID_KEYS = ("guild_id", "channel_id", "user_id")


def _ids_as_strings(data: object) -> object:
    """The payload with integer ids as strings.

    Discord sends snowflakes as strings and the dispatch parsers insist on it;
    some libraries hand their hooks payloads whose ids they already made ints.
    Only a u64 is converted (``str()`` of a huge int raises); anything else is
    left for the parser to refuse.
    """
    if not isinstance(data, dict) or not any(_is_u64(data.get(key)) for key in _ID_KEYS):
        return data
    return {k: str(v) if k in _ID_KEYS and _is_u64(v) else v for k, v in data.items()}


def _is_u64(value: object) -> bool:
    return type(value) is int and 0 <= value < 1 << 64


class VoiceStateSender(Protocol):
    """Sends op 4 (Update Voice State) on the library's gateway."""

    def __call__(
        self, guild_id: str, channel_id: str | None, *, self_mute: bool, self_deaf: bool
    ) -> Awaitable[None]:
        """Join or move to ``channel_id``, or leave with ``None``."""
        ...


class DispatchShard:
    """A :class:`~rxvoice.shard.Shard` whose dispatches come from elsewhere.

    Args:
        update_voice_state: Sends op 4 for the shard (e.g. through the library's
            ``change_voice_state``).
        user_id: The bot's user id, or a function returning it (called each
            time: a library may learn it only after logging in).

    Attributes:
        malformed: Voice dispatches that could not be parsed (each is logged).

    Example:
        >>> shard = DispatchShard(send_op4, user_id=lambda: my_bot.user_id)  # doctest: +SKIP
        >>> my_gateway.on_dispatch(shard.feed)      # every (event name, payload)
        >>> conn = Connection(guild_id=g, channel_id=c, shard=shard)
    """

    def __init__(
        self,
        update_voice_state: VoiceStateSender,
        *,
        user_id: str | int | Callable[[], str | int | None] | None = None,
    ) -> None:
        self._send = update_voice_state
        self._user_id = user_id
        self._voice_updates: EventStream[VoiceUpdate] = EventStream()
        self._closed = False
        self.malformed = 0

    def __repr__(self) -> str:
        return f"DispatchShard(user_id={self.user_id!r}, closed={self._closed})"

    @property
    def user_id(self) -> str | None:
        """Our user id, as given (``None`` while the library does not know it)."""
        value = self._user_id() if callable(self._user_id) else self._user_id
        return None if value is None else str(value)

    @property
    def voice_updates(self) -> Observable[VoiceUpdate]:
        """The voice dispatches fed so far, parsed (hot, no replay)."""
        return self._voice_updates

    def feed(self, event: str, data: object) -> VoiceUpdate | None:
        """Hand the shard a gateway dispatch; the two voice dispatches are emitted.

        Args:
            event: The dispatch name (``t``); other dispatches are ignored.
            data: Its raw payload (``d``), as the gateway sent it.

        Returns:
            The parsed update, or ``None`` if ignored or malformed (a malformed
            one is logged and counted in :attr:`malformed`, never raised).
        """
        parse = _PARSERS.get(event)
        if parse is None or self._closed:
            return None
        try:
            update = parse(_ids_as_strings(data))
        except MalformedMessage as exc:
            self.malformed += 1
            logger.warning("malformed %s ignored: %s", event, exc)
            return None
        self._voice_updates.on_next(update)
        return update

    async def update_voice_state(
        self,
        guild_id: str,
        channel_id: str | None,
        *,
        self_mute: bool = False,
        self_deaf: bool = False,
    ) -> None:
        """Send op 4 through the library: join or move to ``channel_id``, leave with ``None``.

        Raises:
            UsageError: If the shard was closed.
        """
        if self._closed:
            raise UsageError("the shard is closed")
        await self._send(guild_id, channel_id, self_mute=self_mute, self_deaf=self_deaf)

    def close(self) -> None:
        """Stop: complete :attr:`voice_updates` and ignore later dispatches. Idempotent."""
        if not self._closed:
            self._closed = True
            self._voice_updates.on_completed()
