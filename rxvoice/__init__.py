"""rxvoice: Discord voice (gateway v8, DAVE end-to-end encryption) as reactive streams.

Example:
    >>> from rxvoice import Connection, GatewayShard          # doctest: +SKIP
    >>> from rxvoice import operators as vops                 # doctest: +SKIP
    >>> async with rxvoice.connect(token=TOKEN, guild_id=G, channel_id=C) as conn:  # doctest: +SKIP
    ...     conn.on_audio_frame.subscribe(print)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rxvoice import errors
from rxvoice._lazy import lazy_dir, lazy_getattr
from rxvoice.events import (
    AudioFrame,
    AudioGap,
    AudioLevel,
    ClientConnect,
    ClientDisconnect,
    ConnectionState,
    DaveEpochTransition,
    Diagnostic,
    Disconnected,
    PcmChunk,
    SpeakingEvent,
    SpeakingFlags,
    VoiceActivityChange,
)
from rxvoice.secret import Secret

if TYPE_CHECKING:
    from rxvoice.connection import Connection, ConnectionStats
    from rxvoice.shard import GatewayShard, Shard
    from rxvoice.standalone import connect

__version__ = "0.1.0"

# The reactive layer loads on first use, so that the sans-I/O core
# (rxvoice.protocol) imports without asyncio, websockets or reactivex.
_LAZY = {
    "Connection": "rxvoice.connection",
    "ConnectionStats": "rxvoice.connection",
    "GatewayShard": "rxvoice.shard",
    "Shard": "rxvoice.shard",
    "connect": "rxvoice.standalone",
}

__getattr__ = lazy_getattr(__name__, _LAZY)
__dir__ = lazy_dir(__name__, _LAZY)


__all__ = [
    "AudioFrame",
    "AudioGap",
    "AudioLevel",
    "ClientConnect",
    "ClientDisconnect",
    "Connection",
    "ConnectionState",
    "ConnectionStats",
    "DaveEpochTransition",
    "Diagnostic",
    "Disconnected",
    "GatewayShard",
    "PcmChunk",
    "Secret",
    "Shard",
    "SpeakingEvent",
    "SpeakingFlags",
    "VoiceActivityChange",
    "__version__",
    "connect",
    "errors",
]
