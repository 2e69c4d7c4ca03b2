"""Main-gateway integration: what a voice connection needs from a gateway shard.

A voice connection asks the main gateway for a voice server with op 4 (Update
Voice State) and learns its credentials from two dispatches,
``VOICE_STATE_UPDATE`` (session id) and ``VOICE_SERVER_UPDATE`` (token and
endpoint). :class:`Shard` is that interface; :class:`GatewayShard` is a small
built-in implementation (it resumes after drops, detects zombie connections and
backs off with jitter), enough for bots that only do voice and for the sandbox.
Adapters for other libraries' gateways implement the same protocol.
"""

from __future__ import annotations

from rxvoice.shard.backoff import Backoff
from rxvoice.shard.base import Shard, VoiceServerUpdate, VoiceStateUpdate, VoiceUpdate
from rxvoice.shard.gateway import GatewayShard, ShardStats

__all__ = [
    "Backoff",
    "GatewayShard",
    "Shard",
    "ShardStats",
    "VoiceServerUpdate",
    "VoiceStateUpdate",
    "VoiceUpdate",
]
