"""rxvoice for discord.py (and py-cord, which installs the same ``discord`` module).

Example:
    >>> from rxvoice.discordpy import RxVoiceClient                  # doctest: +SKIP
    >>> vc = await channel.connect(cls=RxVoiceClient)
    >>> vc.connection.on_audio_frame.subscribe(print)

Needs the ``discordpy`` extra (``pip install 'rxvoice[discordpy]'``).
"""

from __future__ import annotations

from types import ModuleType
from typing import ClassVar

import discord

from rxvoice.adapters import DispatchShard, RxVoiceProtocol

__all__ = ["DispatchShard", "RxVoiceClient"]


class RxVoiceClient(RxVoiceProtocol, discord.VoiceProtocol):
    """A discord.py voice client that is an rxvoice :class:`~rxvoice.Connection`.

    ``vc = await channel.connect(cls=RxVoiceClient)`` joins through discord.py's
    gateway; ``vc.connection`` has every observable (audio frames, speaking,
    DAVE transitions, ...). See :class:`rxvoice.adapters.RxVoiceProtocol` for
    the members; :meth:`~rxvoice.adapters.RxVoiceProtocol.with_options` passes
    :class:`~rxvoice.Connection` options.
    """

    library: ClassVar[ModuleType] = discord
