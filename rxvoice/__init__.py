"""rxvoice: Discord voice (gateway v8, DAVE end-to-end encryption) as reactive streams.

Example:
    >>> from rxvoice import Connection, GatewayShard          # doctest: +SKIP
    >>> from rxvoice import operators as vops                 # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rxvoice import errors
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rxvoice' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
