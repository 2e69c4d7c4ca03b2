"""rxvoice: Discord voice (gateway v8, DAVE end-to-end encryption) as reactive streams.

Example:
    >>> from rxvoice import Connection, GatewayShard          # doctest: +SKIP
    >>> from rxvoice import operators as vops                 # doctest: +SKIP
"""

from __future__ import annotations

from rxvoice import errors
from rxvoice.connection import Connection, ConnectionStats
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
from rxvoice.shard import GatewayShard, Shard

__version__ = "0.1.0"

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
