"""Mixing several voice streams into one, aligned on their time and RTP timestamps.

:func:`mix_blocks` sums equally shaped int16 blocks with saturation: the sum is
exact (float32 up to 512 sources, int32 beyond) and clipped to [-32768, 32767],
so loud overlaps distort instead of wrapping around.

:class:`Mixer` adds time alignment: each source pushes decoded 20 ms blocks
with their RTP timestamps, and :meth:`Mixer.mix` produces one mixed block per
20 ms *tick*, with silence for the sources that have nothing for that tick.

Alignment model:
    The mixer counts ticks; :attr:`Mixer.tick` is the next one :meth:`Mixer.mix`
    produces. Each block comes with its RTP timestamp and its *position*
    ``at``: the tick, as a float, at which its first sample is due (the
    ``mix`` operator derives it from the block's call time; by default it is
    :attr:`Mixer.tick`, "now"). A source is *anchored* on a block: that block
    plays in the first tick at or after its position (``ceil(at)``), or, if
    that tick is already mixed, in the tick being filled (the talk spurt
    starts late: counted in :attr:`MixerStats.late_spurts`), never before the
    source's queued audio. The source's later blocks play at their timestamp's
    distance from the anchor, ``round(ts_diff(ts, anchor_ts) /
    timestamp_step)`` ticks after it, whenever they arrive: a block arriving
    after its tick was mixed is dropped and counted (:attr:`MixerStats.late`)
    and the rest of its talk spurt keeps its ticks. A source is re-anchored
    when a block's position is more than ``slack`` ticks away from where its
    timestamp puts it (a new talk spurt: senders such as Discord clients do
    not advance the timestamp while silent, so the pause shows as a jump in
    position; or a restarted stream), or when it would land more than
    ``max_ahead`` ticks ahead (then right after its queued audio). A block for
    a tick its source already filled is dropped and counted.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import numpy as np
import numpy.typing as npt

from rxvoice.errors import UsageError
from rxvoice.protocol.seq import ts_diff

__all__ = ["Mixer", "MixerStats", "mix_blocks"]

K = TypeVar("K", bound=Hashable)
PcmArray = npt.NDArray[np.int16]

_INT16_MIN = -32768
_INT16_MAX = 32767
_DEFAULT_SHAPE = (960, 2)
# float32 holds every integer up to 2**24 exactly: 512 full-scale int16 blocks.
_EXACT_FLOAT32_BLOCKS = 512
# Positions computed from float seconds land a hair off whole ticks: a block due
# exactly at a tick must not be pushed to the next one by rounding noise.
_POSITION_TOLERANCE = 1e-6


def mix_blocks(blocks: Sequence[PcmArray], *, shape: tuple[int, ...] = _DEFAULT_SHAPE) -> PcmArray:
    """Sum int16 PCM blocks with saturation.

    Args:
        blocks: Equally shaped int16 arrays, e.g. ``(960, 2)`` each.
        shape: The shape of the silent result when ``blocks`` is empty.

    Returns:
        A new int16 array: the element-wise sum, clipped to [-32768, 32767].

    Raises:
        UsageError: If the blocks differ in shape or are not int16.

    Example:
        >>> import numpy as np
        >>> loud = np.full((2, 1), 30000, np.int16)
        >>> mix_blocks([loud, loud])[:, 0].tolist()
        [32767, 32767]
    """
    if not blocks:
        return np.zeros(shape, np.int16)
    first = blocks[0]
    kinds = {(b.shape, b.dtype) for b in blocks}
    if len(kinds) != 1 or first.dtype != np.int16:
        raise UsageError(f"blocks must all be int16 of one shape, got {sorted(map(str, kinds))}")
    if len(blocks) == 1:
        return first.copy()
    return _sum(blocks, first.shape)


def _sum(blocks: Sequence[PcmArray], shape: tuple[int, ...]) -> PcmArray:
    """Saturating sum of validated blocks (same shape, int16)."""
    try:
        # One join of the raw buffers is much cheaper than np.stack, which
        # costs a Python-level reshape per block.
        stacked = np.frombuffer(b"".join(cast("Sequence[Any]", blocks)), np.int16).reshape(
            len(blocks), -1
        )
    except (BufferError, TypeError, ValueError):  # non-contiguous blocks
        stacked = np.stack(blocks).reshape(len(blocks), -1)
    if len(blocks) <= _EXACT_FLOAT32_BLOCKS:
        # A float32 matrix-vector product (BLAS) is about 25% faster than an
        # int32 reduction, and exact: every partial sum is an integer below 2**24.
        ones = np.ones(len(blocks), np.float32)
        summed: npt.NDArray[np.float32] = ones @ stacked.astype(np.float32)
        np.clip(summed, _INT16_MIN, _INT16_MAX, out=summed)
        return summed.astype(np.int16).reshape(shape)
    total: npt.NDArray[np.int32] = stacked.sum(axis=0, dtype=np.int32)
    np.clip(total, _INT16_MIN, _INT16_MAX, out=total)
    return total.astype(np.int16).reshape(shape)


@dataclass(slots=True)
class MixerStats:
    """Counters of a :class:`Mixer`.

    Attributes:
        ticks: Blocks produced by :meth:`Mixer.mix`.
        blocks: 20 ms blocks accepted from sources.
        late: Blocks dropped because their tick was already mixed (the rest of
            their talk spurt kept its ticks).
        late_spurts: Talk spurts whose first block came after its tick was
            mixed: the spurt was moved to the tick being filled, later than
            its position says.
        duplicates: Blocks dropped because their source already filled that tick.
        reanchors: Times a source was (re-)anchored, including its first block.
    """

    ticks: int = 0
    blocks: int = 0
    late: int = 0
    late_spurts: int = 0
    duplicates: int = 0
    reanchors: int = 0


@dataclass(slots=True)
class _Source:
    anchor_tick: int  # the tick of the anchor block
    anchor_at: float  # the anchor block's position
    anchor_ts: int  # the anchor block's RTP timestamp
    queue: dict[int, PcmArray] = field(default_factory=dict)
    last_tick: int = -1  # the latest tick it filled


class Mixer(Generic[K]):
    """Aligns per-source PCM blocks on their positions and RTP timestamps, and mixes them per tick.

    Not thread-safe; sans-I/O: the caller decides when a tick is due (e.g. a
    20 ms timer, or "every source delivered") and where a block belongs
    (``at``), as the module docstring describes.

    Args:
        frame_samples: Samples per channel in one tick (960: 20 ms at 48 kHz).
        channels: Channels per block.
        timestamp_step: RTP timestamp units per tick (960 for 20 ms Opus).
        max_ahead: How many ticks ahead of :attr:`tick` a block may be queued
            before its source is re-anchored; bounds memory per source.
        slack: How many ticks a block's position may differ from where its
            timestamp puts it (from its source's anchor) before the source is
            re-anchored: 5 ticks (0.1 s), as ``decode_opus`` tells a new talk
            spurt from a late packet.

    Raises:
        UsageError: If an argument is out of range.

    Example:
        >>> import numpy as np
        >>> mixer: Mixer[int] = Mixer()
        >>> one = np.ones((960, 2), np.int16)
        >>> mixer.add(1, one, timestamp=5000)  # anchored: plays in tick 0
        0
        >>> mixer.add(1, one, timestamp=5000 + 2 * 960)  # two ticks later
        2
        >>> mixer.add(2, one * 3, timestamp=123, at=0.4)  # due 0.4 ticks from now
        1
        >>> [int(mixer.mix()[0, 0]) for _ in range(3)]  # tick 0: only source 1
        [1, 3, 1]
    """

    __slots__ = (
        "_channels",
        "_frame_samples",
        "_max_ahead",
        "_slack",
        "_sources",
        "_tick",
        "_timestamp_step",
        "stats",
    )

    def __init__(
        self,
        *,
        frame_samples: int = 960,
        channels: int = 2,
        timestamp_step: int = 960,
        max_ahead: int = 50,
        slack: float = 5.0,
    ) -> None:
        if (
            frame_samples < 1
            or channels < 1
            or timestamp_step < 1
            or max_ahead < 0
            or not 0 <= slack < math.inf
        ):
            raise UsageError(
                "frame_samples, channels and timestamp_step must be >= 1, "
                "max_ahead >= 0 and slack finite and >= 0"
            )
        self._frame_samples = frame_samples
        self._channels = channels
        self._timestamp_step = timestamp_step
        self._max_ahead = max_ahead
        self._slack = slack
        self._sources: dict[K, _Source] = {}
        self._tick = 0
        self.stats = MixerStats()

    @property
    def tick(self) -> int:
        """The index of the tick the next :meth:`mix` produces."""
        return self._tick

    @property
    def sources(self) -> frozenset[K]:
        """The sources the mixer knows (anchored, possibly silent now)."""
        return frozenset(self._sources)

    def queued(self, source: K) -> int:
        """Return how many ticks of audio ``source`` has queued (0 if unknown)."""
        state = self._sources.get(source)
        return len(state.queue) if state else 0

    def add(
        self,
        source: K,
        pcm: PcmArray,
        *,
        timestamp: int | None = None,
        at: float | None = None,
        tick: int | None = None,
    ) -> int | None:
        """Queue a decoded block of ``source``.

        Args:
            source: Who it came from (an SSRC or a user id).
            pcm: int16 samples shaped ``(samples, channels)``. Longer blocks
                (e.g. 40 ms packets) fill consecutive ticks; a partial last
                tick is padded with silence.
            timestamp: The block's RTP timestamp, aligned as the module
                docstring describes.
            at: With ``timestamp``: the block's position, the tick (a float)
                at which its first sample is due; defaults to :attr:`tick`.
            tick: Place the block at this tick index directly instead (no
                alignment). Give exactly one of ``timestamp`` and ``tick``.

        Returns:
            The tick its first frame will play in, or ``None`` if it was
            dropped (late or duplicate).

        Raises:
            UsageError: If ``pcm`` is not int16 of the right channel count,
                not exactly one of ``timestamp`` and ``tick`` is given, ``at``
                comes without ``timestamp`` or is not finite.
        """
        if (timestamp is None) == (tick is None):
            raise UsageError("give exactly one of timestamp= and tick=")
        if at is not None and (timestamp is None or not math.isfinite(at)):
            raise UsageError(f"at= must be a finite position given with timestamp=, got {at}")
        ch = self._channels
        if pcm.dtype != np.int16 or pcm.ndim != 2 or pcm.shape[1] != ch or pcm.shape[0] == 0:
            raise UsageError(
                f"pcm must be int16 shaped (samples, {ch}), got {pcm.dtype} {pcm.shape}"
            )
        state = self._sources.get(source)
        if tick is not None:
            if state is None:
                state = self._sources[source] = _Source(tick, float(tick), 0)
            target = tick
        else:
            assert timestamp is not None
            step = self._timestamp_step
            position = float(self._tick) if at is None else at
            # How far the block is from its spurt's anchor, by timestamp; a
            # position that disagrees by more than the slack starts a new spurt.
            diff = 0 if state is None else ts_diff(timestamp, state.anchor_ts)
            if state is None or abs(position - state.anchor_at - diff / step) > self._slack:
                state = self._anchor(source, state, timestamp, position)
                diff = 0
            target = state.anchor_tick + (diff + step // 2) // step
            if target > self._tick + self._max_ahead:
                # A jump ahead (a new stream, or a clock running ahead): play
                # it right after what is queued, which bounds the queue.
                state = self._anchor(source, state, timestamp, position, ahead=True)
                target = state.anchor_tick
        if target < self._tick:
            self.stats.late += 1
            return None
        if target in state.queue:
            self.stats.duplicates += 1
            return None
        self._enqueue(state, target, pcm)
        return target

    def mix(self) -> PcmArray:
        """Produce the mixed block of the current tick and move to the next.

        Returns:
            A new int16 array shaped ``(frame_samples, channels)``: the
            saturating sum of every source's block for this tick (silence if
            none has one).
        """
        tick = self._tick
        self._tick = tick + 1
        self.stats.ticks += 1
        blocks = [b for s in self._sources.values() if (b := s.queue.pop(tick, None)) is not None]
        shape = (self._frame_samples, self._channels)
        if not blocks:
            return np.zeros(shape, np.int16)
        if len(blocks) == 1:
            return blocks[0]  # a private copy made by add()
        return _sum(blocks, shape)

    def remove(self, source: K) -> None:
        """Forget ``source`` and drop its queued audio (e.g. the user left)."""
        self._sources.pop(source, None)

    def clear(self) -> None:
        """Forget every source; the tick counter keeps counting."""
        self._sources.clear()

    def prune(self, idle_ticks: int) -> list[K]:
        """Forget the sources with nothing queued that filled no tick for ``idle_ticks`` ticks.

        Safe with ``idle_ticks > slack``: a forgotten source's next block
        anchors it afresh at its position, which is where its old anchor puts
        it (positions from call times, unless its spurt had been moved late)
        or a new spurt anyway (a pause longer than the slack). Bounds the state
        of a mixer fed by churning sources (users leaving, new SSRCs).

        Returns:
            The sources forgotten.
        """
        horizon = self._tick - idle_ticks
        idle = [k for k, s in self._sources.items() if not s.queue and s.last_tick < horizon]
        for key in idle:
            del self._sources[key]
        return idle

    # -- internals ---------------------------------------------------------

    def _anchor(
        self, source: K, state: _Source | None, timestamp: int, position: float, ahead: bool = False
    ) -> _Source:
        self.stats.reanchors += 1
        after_queued = max(state.queue, default=self._tick - 1) + 1 if state else self._tick
        due = math.ceil(position - _POSITION_TOLERANCE)
        if ahead or due > self._tick + self._max_ahead:
            first = max(self._tick, after_queued)
        else:
            if due < self._tick:
                self.stats.late_spurts += 1
            first = max(due, self._tick, after_queued)
        if state is None:
            state = self._sources[source] = _Source(first, position, timestamp)
        else:
            state.anchor_tick, state.anchor_at, state.anchor_ts = first, position, timestamp
        return state

    def _enqueue(self, state: _Source, tick: int, pcm: PcmArray) -> None:
        n = self._frame_samples
        total = pcm.shape[0]
        state.last_tick = max(state.last_tick, tick + (total - 1) // n)
        if total == n:  # the usual case: one 20 ms frame
            # A private contiguous copy: the caller may reuse its array.
            state.queue[tick] = pcm.copy()
            self.stats.blocks += 1
            return
        for offset in range(0, total, n):
            frame = pcm[offset : offset + n]
            if frame.shape[0] < n:  # a partial last tick: pad with silence
                padded = np.zeros((n, self._channels), np.int16)
                padded[: frame.shape[0]] = frame
                frame = padded
            else:
                frame = frame.copy()
            state.queue.setdefault(tick + offset // n, frame)
            self.stats.blocks += 1
