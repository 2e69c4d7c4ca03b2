"""Does a mix hold what the users' streams hold? (``mix()`` tests, marble and sandbox.)"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from rxvoice.audio.mixer import mix_blocks
from rxvoice.events import PcmChunk


@dataclass
class MixCheck:
    """How the mix compares with the users' chunks it was made of (counts)."""

    ticks: int  # mixed ticks compared
    loud_ticks: int  # of those, the ones that are not digitally silent
    audible: int  # ticks where some user's chunk is not digitally silent
    heard: int  # users' chunks that are not digitally silent
    holes: int  # of those, the ones whose tick in the mix is digitally silent
    mismatched: int  # ticks that are not exactly the saturating sum of their users' chunks


def is_mix(chunk: PcmChunk) -> bool:
    """Whether ``chunk`` is a tick of ``mix()`` (no user, no SSRC)."""
    return chunk.user_id is None and chunk.ssrc is None


def check_mix(
    chunks: Iterable[PcmChunk], interval: float = 0.02, until: int | None = None
) -> MixCheck:
    """Put each user's chunk in the tick of its call time; compare with the mix's ticks.

    A chunk of call time ``t`` belongs in the first tick at or after ``t``, as
    ``mix()`` places the first chunk of each talk spurt, the rest following by
    RTP timestamp: the same ticks, call times being smooth within a spurt.

    Args:
        chunks: The users' chunks and the mix's ticks (starting with tick 0), mixed.
        interval: Seconds per tick.
        until: Compare ticks up to this index only (and the chunks they hold).

    Returns:
        The counts.
    """
    chunks = list(chunks)
    ticks = {c.timestamp // 960: c for c in chunks if is_mix(c)}
    origin = ticks[0].time
    last = max(ticks) if until is None else until
    expected: dict[int, list[np.ndarray]] = {}  # type: ignore[type-arg]
    heard = holes = 0
    for c in chunks:
        index = math.ceil((c.time - origin) / interval - 1e-6)
        if is_mix(c) or index > last:
            continue
        expected.setdefault(index, []).append(c.pcm)
        if c.pcm.any():
            heard += 1
            holes += index not in ticks or not ticks[index].pcm.any()
    compared = {k: t for k, t in ticks.items() if k <= last}
    mismatched = sum(
        not np.array_equal(t.pcm, mix_blocks(expected.get(k, []))) for k, t in compared.items()
    )
    mismatched += len(expected.keys() - compared.keys())
    return MixCheck(
        ticks=len(compared),
        loud_ticks=sum(bool(t.pcm.any()) for t in compared.values()),
        audible=sum(any(b.any() for b in blocks) for blocks in expected.values()),
        heard=heard,
        holes=holes,
        mismatched=mismatched,
    )
