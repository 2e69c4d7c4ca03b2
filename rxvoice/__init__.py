"""rxvoice: Discord voice (gateway v8, DAVE end-to-end encryption) as reactive streams.

Example:
    >>> from rxvoice import Connection, GatewayShard          # doctest: +SKIP
    >>> from rxvoice import operators as vops                 # doctest: +SKIP
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

__version__ = "0.1.0"

# The reactive layer loads on first use, so that the sans-I/O core
# (rxvoice.protocol) imports without asyncio, websockets or reactivex.
_LAZY = {
    "Connection": "rxvoice.connection",
    "ConnectionStats": "rxvoice.connection",
    "GatewayShard": "rxvoice.shard",
    "Shard": "rxvoice.shard",
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
    "errors",
]
