"""Adapters: rxvoice inside the bots people already run.

- :class:`DispatchShard`: a :class:`~rxvoice.shard.Shard` fed by any library's
  gateway (raw voice dispatches in, op 4 out); about fifty lines adapt a new
  library with it (see ``docs/forks.md``).
- :func:`voice_client_class`: the ``VoiceProtocol`` voice client for
  discord.py, py-cord, nextcord or disnake (``rxvoice.discordpy.RxVoiceClient``
  for discord.py).
"""

from __future__ import annotations

from rxvoice.adapters.shard import DispatchShard, VoiceStateSender
from rxvoice.adapters.voice_protocol import RxVoiceProtocol, voice_client_class

__all__ = ["DispatchShard", "RxVoiceProtocol", "VoiceStateSender", "voice_client_class"]
