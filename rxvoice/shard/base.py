"""The shard interface and the two voice dispatches it delivers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from reactivex import Observable

from rxvoice.errors import MalformedMessage
from rxvoice.protocol.gateway import check_snowflake
from rxvoice.secret import Secret

__all__ = ["Shard", "VoiceServerUpdate", "VoiceStateUpdate", "VoiceUpdate"]


def _snowflake(d: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = d.get(key)
    if value is None and optional:
        return None
    return check_snowflake(value, key)


@dataclass(frozen=True, slots=True)
class VoiceStateUpdate:
    """The ``VOICE_STATE_UPDATE`` dispatch (the fields voice needs).

    Attributes:
        guild_id: The guild, when in a guild.
        channel_id: The voice channel, or ``None`` when the user left.
        user_id: Whose voice state this is.
        session_id: The voice session id used in Identify.
    """

    guild_id: str | None
    channel_id: str | None
    user_id: str
    session_id: str

    @classmethod
    def parse(cls, d: object) -> VoiceStateUpdate:
        """Parse the dispatch's ``d``.

        Raises:
            MalformedMessage: If a field is missing or of the wrong type.
        """
        if not isinstance(d, dict) or not isinstance(d.get("session_id"), str):
            raise MalformedMessage("VOICE_STATE_UPDATE needs a session_id")
        user_id = _snowflake(d, "user_id")
        assert user_id is not None
        return cls(
            guild_id=_snowflake(d, "guild_id", optional=True),
            channel_id=_snowflake(d, "channel_id", optional=True),
            user_id=user_id,
            session_id=d["session_id"],
        )


@dataclass(frozen=True, slots=True)
class VoiceServerUpdate:
    """The ``VOICE_SERVER_UPDATE`` dispatch.

    Attributes:
        guild_id: The guild.
        token: The voice token (a secret).
        endpoint: ``host:port`` without scheme, or ``None`` while Discord
            reallocates the voice server (wait for another update).
    """

    guild_id: str
    token: Secret[str] = field(repr=False)
    endpoint: str | None

    @classmethod
    def parse(cls, d: object) -> VoiceServerUpdate:
        """Parse the dispatch's ``d``.

        Raises:
            MalformedMessage: If a field is missing or of the wrong type.
        """
        if not isinstance(d, dict) or not isinstance(d.get("token"), str):
            raise MalformedMessage("VOICE_SERVER_UPDATE needs a token")
        endpoint = d.get("endpoint")
        if endpoint is not None and not isinstance(endpoint, str):
            raise MalformedMessage("VOICE_SERVER_UPDATE endpoint must be a string or null")
        guild_id = _snowflake(d, "guild_id")
        assert guild_id is not None
        return cls(guild_id=guild_id, token=Secret(d["token"]), endpoint=endpoint)


VoiceUpdate = VoiceStateUpdate | VoiceServerUpdate


@runtime_checkable
class Shard(Protocol):
    """What a :class:`rxvoice.Connection` needs from a main-gateway shard."""

    @property
    def user_id(self) -> str | None:
        """Our (bot) user id, once the shard is ready."""
        ...

    @property
    def voice_updates(self) -> Observable[VoiceUpdate]:
        """Every ``VOICE_STATE_UPDATE`` and ``VOICE_SERVER_UPDATE`` dispatch, as they come."""
        ...

    async def update_voice_state(
        self,
        guild_id: str,
        channel_id: str | None,
        *,
        self_mute: bool = False,
        self_deaf: bool = False,
    ) -> None:
        """Send op 4 (Update Voice State): join, move (a channel id) or leave (``None``)."""
        ...
