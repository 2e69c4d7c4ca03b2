"""Testing tools that ship with rxvoice: the local Discord sandbox and marble helpers.

- :class:`Sandbox` (:mod:`rxvoice.testing.sandbox`): a local Discord for voice clients.
- :func:`voice_marbles`, :func:`values` (:mod:`rxvoice.testing.marbles`): marble
  strings for voice streams in virtual time.
- :class:`ToneSpeaker` and packet builders (:mod:`rxvoice.testing.packets`).

Names are resolved lazily, so importing this package costs nothing until used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rxvoice._lazy import lazy_dir, lazy_getattr

if TYPE_CHECKING:
    from rxvoice.testing.marbles import VoiceMarbles, values, voice_marbles
    from rxvoice.testing.packets import ToneSpeaker
    from rxvoice.testing.sandbox import Sandbox

__all__ = ["Sandbox", "ToneSpeaker", "VoiceMarbles", "values", "voice_marbles"]

_WHERE = {
    "Sandbox": "rxvoice.testing.sandbox",
    "ToneSpeaker": "rxvoice.testing.packets",
    "VoiceMarbles": "rxvoice.testing.marbles",
    "values": "rxvoice.testing.marbles",
    "voice_marbles": "rxvoice.testing.marbles",
}

__getattr__ = lazy_getattr(__name__, _WHERE)
__dir__ = lazy_dir(__name__, _WHERE)
