"""A per-SSRC jitter buffer: puts RTP packets back in sequence order.

UDP reorders, duplicates and drops packets. :class:`JitterBuffer` takes packets
as they arrive and releases them strictly in sequence order (across the
65535 → 0 wraparound), with a :class:`JitterGap` marker where packets were given
up on. It is a plain class, sans-I/O: the caller passes the current time
(``now``, in seconds, any monotonic time base) and asks :meth:`JitterBuffer.next_deadline`
when to call :meth:`JitterBuffer.poll` again, so one timer per buffer is enough.

Rules, in the order :meth:`JitterBuffer.push` applies them (``d`` is the signed
sequence distance from the next sequence number to release):

- The first packet starts the stream and is released at once.
- ``d == 0``: released at once, with any held packets that follow it. A stream
  with nothing missing therefore gets no added delay.
- ``0 < d < capacity``: held until the packets before it arrive. When the
  oldest missing packet has been waited for ``latency`` seconds (counted from
  the arrival of the first packet that showed it missing), a gap marker is
  released for the missing run and the held packets behind it flow.
- ``capacity <= d <= max_gap``: the hold window overflows. Everything more
  than ``capacity - 1`` packets behind the new packet is released at once
  (held packets, and gap markers for the holes), then the packet is handled
  as above. This bounds memory to ``capacity`` packets.
- ``-max_gap <= d < 0``: the packet was already released (a duplicate) or
  already given up on (late). Either way it is dropped and counted.
- ``|d| > max_gap``: a discontinuity, e.g. the sender restarted with a new
  random sequence number. Rather than reporting a gap of thousands of
  packets, the buffer restarts the stream there: held packets are flushed and
  the first packet of the new run is released with ``resynced=True`` (a decoder
  should reset). A lone far packet could also be a stray, so the restart
  waits for a confirmation: a second far packet less than ``capacity`` from
  the first, or ``latency`` seconds without news of the current stream. A new
  packet of the current stream arriving meanwhile discards the stray.

Adaptive latency (optional, ``max_latency``): the wait grows when reordered
packets needed most of it or arrived after their gap was declared, up to
``max_latency``, and decays slowly back to ``latency`` while the network is calm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

from rxvoice.errors import UsageError
from rxvoice.protocol.seq import SEQ_MOD, seq_diff, ts_add, ts_diff

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_LATENCY",
    "DEFAULT_MAX_GAP",
    "JitterBuffer",
    "JitterGap",
    "JitterPacket",
    "JitterStats",
    "Release",
]

T = TypeVar("T")

DEFAULT_CAPACITY = 64
"""Packets held at most per buffer: 1.28 s of 20 ms Opus frames."""

DEFAULT_LATENCY = 0.06
"""Seconds to wait for a missing packet: three 20 ms frames."""

DEFAULT_MAX_GAP = 250
"""Largest sequence jump (5 s of 20 ms frames) still treated as loss, not a restart."""

# How fast an adapted latency shrinks back towards the base latency, in seconds
# of latency per second of stream time: a spike of +100 ms fades in about 10 s.
_LATENCY_DECAY = 0.01
# Headroom over the longest wait that a reordered packet actually needed.
_LATENCY_HEADROOM = 1.5

# History ring values: whether an already passed sequence was released or lost.
_LOST = 0
_RELEASED = 1


@dataclass(frozen=True, slots=True)
class JitterPacket(Generic[T]):
    """A packet released in order.

    Attributes:
        sequence: Its RTP sequence number (16-bit).
        timestamp: Its RTP timestamp (32-bit).
        item: What the caller pushed with it.
        resynced: ``True`` when this packet restarts the stream after a
            sequence discontinuity (see the module docstring): state that
            depends on continuity, such as an Opus decoder, should be reset.
    """

    sequence: int
    timestamp: int
    item: T
    resynced: bool = False


@dataclass(frozen=True, slots=True)
class JitterGap:
    """Consecutive packets that the buffer gave up waiting for.

    Attributes:
        sequence: The first missing sequence number.
        count: How many consecutive packets are missing (at least 1).
        timestamp: The expected RTP timestamp of the first missing packet,
            interpolated between the packets around the gap (960 per packet
            for 20 ms Opus frames at 48 kHz).
    """

    sequence: int
    count: int
    timestamp: int


Release: TypeAlias = JitterPacket[T] | JitterGap
"""What a jitter buffer releases: a packet or a gap marker."""


@dataclass(slots=True)
class JitterStats:
    """Counters of one :class:`JitterBuffer` (cumulative, kept across ``reset``).

    ``received == released + duplicates + late + discarded + held`` always
    holds, where
    ``held`` is :attr:`JitterBuffer.held`.

    Attributes:
        received: Packets pushed.
        released: Packets released (in order).
        duplicates: Packets dropped because the same sequence number was
            already held or released.
        late: Packets dropped because they arrived after their gap was
            declared (or too far behind to tell).
        lost: Sequence numbers declared missing (the sum of gap counts).
        gaps: Gap markers released.
        reordered: Packets that arrived after a later packet and were still
            released in order.
        discarded: Far-off packets dropped as strays (see the module docstring).
        overflows: Times the hold window overflowed and forced releases.
        resyncs: Times the stream restarted after a sequence discontinuity.
    """

    received: int = 0
    released: int = 0
    duplicates: int = 0
    late: int = 0
    lost: int = 0
    gaps: int = 0
    reordered: int = 0
    discarded: int = 0
    overflows: int = 0
    resyncs: int = 0


class JitterBuffer(Generic[T]):
    """Reorders the packets of one RTP stream (one SSRC).

    Args:
        capacity: The widest reordering window, in packets: at most
            ``capacity - 1`` packets wait for a missing one (plus one far-off
            packet awaiting a restart confirmation). Bounds memory.
        latency: Seconds to wait for a missing packet before declaring it lost
            (the minimum latency when adaptive).
        max_latency: Enables adaptive latency up to this many seconds.
            ``None`` (the default) keeps ``latency`` fixed.
        max_gap: The largest sequence jump, either way, treated as loss or
            lateness; larger jumps are a discontinuity and resync the stream.
            Defaults to ``max(DEFAULT_MAX_GAP, capacity)``.

    Raises:
        UsageError: If an argument is out of range.

    Example:
        >>> jb: JitterBuffer[str] = JitterBuffer(latency=0.06)
        >>> [r.sequence for r in jb.push(65535, 0, "a", now=0.00)]
        [65535]
        >>> jb.push(1, 1920, "c", now=0.02)  # 0 is missing: held
        []
        >>> jb.next_deadline()
        0.08
        >>> [r.sequence for r in jb.push(0, 960, "b", now=0.03)]  # fills the hole
        [0, 1]
    """

    __slots__ = (
        "_candidate",
        "_capacity",
        "_held",
        "_highest",
        "_history",
        "_history_mask",
        "_last_now",
        "_last_seq",
        "_last_ts",
        "_latency",
        "_max_gap",
        "_max_latency",
        "_min_latency",
        "_next",
        "_noticed",
        "stats",
    )

    def __init__(
        self,
        *,
        capacity: int = DEFAULT_CAPACITY,
        latency: float = DEFAULT_LATENCY,
        max_latency: float | None = None,
        max_gap: int | None = None,
    ) -> None:
        if max_gap is None:
            max_gap = max(DEFAULT_MAX_GAP, capacity)
        if not 1 <= capacity <= SEQ_MOD // 4:
            raise UsageError(f"capacity must be in [1, {SEQ_MOD // 4}], got {capacity}")
        if not latency >= 0.0:
            raise UsageError(f"latency must be >= 0, got {latency}")
        if max_latency is not None and not max_latency >= latency:
            raise UsageError(f"max_latency ({max_latency}) must be >= latency ({latency})")
        if not capacity <= max_gap < SEQ_MOD // 2:
            raise UsageError(f"max_gap must be in [capacity, {SEQ_MOD // 2 - 1}], got {max_gap}")
        self._capacity = capacity
        self._min_latency = latency
        self._max_latency = latency if max_latency is None else max_latency
        self._latency = latency
        self._max_gap = max_gap
        # A ring remembering, for the last sequence numbers passed, whether each
        # was released or lost: tells duplicates from late packets.
        size = 1 << max_gap.bit_length()
        self._history = bytearray(size)
        self._history_mask = size - 1
        self.stats = JitterStats()
        # Stream state. Sequence numbers are kept "extended" (unwrapped, never
        # decreasing) inside the buffer; 16-bit values go in and out.
        self._next: int | None = None  # extended sequence of the next release
        self._held: dict[int, tuple[int, int, T, float]] = {}
        self._noticed = 0.0  # earliest arrival among held packets
        self._highest = 0  # highest extended sequence accepted
        self._last_seq = 0  # extended sequence of the last released packet
        self._last_ts = 0  # its timestamp
        self._last_now = 0.0
        # A far-off packet waiting for confirmation that the sender restarted.
        self._candidate: tuple[int, int, T, float] | None = None

    # -- introspection -----------------------------------------------------

    @property
    def capacity(self) -> int:
        """The reordering window, in packets."""
        return self._capacity

    @property
    def latency(self) -> float:
        """The current wait for a missing packet, in seconds."""
        return self._latency

    @property
    def held(self) -> int:
        """How many packets are waiting (for an earlier one, or for confirmation)."""
        return len(self._held) + (self._candidate is not None)

    def next_deadline(self) -> float | None:
        """Return when :meth:`poll` may release something, or ``None``.

        Returns:
            The time (same base as ``now``) at which the oldest missing packet
            is given up on (or a restart is accepted unconfirmed), or ``None``
            when nothing is held. Calling :meth:`poll` earlier is harmless;
            later only delays the release.
        """
        deadline = self._noticed + self._latency if self._held else None
        if self._candidate is not None:
            restart = self._candidate[3] + self._latency
            deadline = restart if deadline is None else min(deadline, restart)
        return deadline

    # -- input ---------------------------------------------------------------

    def push(self, sequence: int, timestamp: int, item: T, now: float) -> list[Release[T]]:
        """Add a received packet and return what can be released now.

        Args:
            sequence: The RTP sequence number (0 to 65535).
            timestamp: The RTP timestamp (0 to 2**32 - 1).
            item: The payload to hand back in order (e.g. the packet).
            now: The current time in seconds; must not go backwards.

        Returns:
            Releases in sequence order (possibly empty): the packet itself
            and held ones after it, and gap markers for packets that a window
            overflow or a resync forced out.

        Raises:
            UsageError: If ``sequence`` is not a 16-bit value.
        """
        if not 0 <= sequence < SEQ_MOD:
            raise UsageError(f"sequence must be in [0, 65535], got {sequence}")
        stats = self.stats
        stats.received += 1
        if self._max_latency != self._min_latency:
            self._decay_latency(now)
        out: list[Release[T]] = []
        if self._next is None:
            self._start(sequence, sequence, timestamp, item, out, resynced=False)
        else:
            self._accept(sequence, timestamp, item, now, out)
        return out

    def push_next(self, sequence: int, timestamp: int, now: float) -> bool:
        """Release a packet at once if it is the next one and nothing waits: the common case.

        What :meth:`push` does for such a packet, without building a release
        list and a :class:`JitterPacket`: the caller passes its item on itself.

        Args:
            sequence: The RTP sequence number.
            timestamp: The RTP timestamp.
            now: The current time in seconds; must not go backwards.

        Returns:
            ``True`` when the packet was released; ``False`` when it is not
            the next one, or something is held (then call :meth:`push`; nothing
            was changed).
        """
        nxt = self._next
        if nxt is None or sequence != nxt & 0xFFFF or self._held or self._candidate is not None:
            return False
        if self._max_latency != self._min_latency:
            self._decay_latency(now)
        stats = self.stats
        stats.received += 1
        if nxt < self._highest:
            stats.reordered += 1
        else:
            self._highest = nxt
        self._history[nxt & self._history_mask] = _RELEASED
        self._last_seq = nxt
        self._last_ts = timestamp
        self._next = nxt + 1
        stats.released += 1
        return True

    def poll(self, now: float) -> list[Release[T]]:
        """Release what is due at ``now``: gap markers for packets waited on too long.

        Args:
            now: The current time in seconds; must not go backwards.

        Returns:
            Releases in sequence order (possibly empty).
        """
        out: list[Release[T]] = []
        if self._max_latency != self._min_latency:
            self._decay_latency(now)
        while self._held and now >= self._noticed + self._latency:
            self._skip_hole(out)
            self._drain(out)
            self._update_noticed()
        candidate = self._candidate
        if candidate is not None and now >= candidate[3] + self._latency:
            # Nothing of the current stream came meanwhile: accept the restart.
            self._candidate = None
            self._resync(candidate[0], candidate[1], candidate[2], out)
        return out

    def flush(self) -> list[Release[T]]:
        """Release everything held, in order, with gap markers for the holes.

        Use it when the stream ends. The buffer stays usable: the next packet
        continues after the last one released. A far-off packet waiting for
        confirmation is accepted as a restart and released last.

        Returns:
            Releases in sequence order (possibly empty).
        """
        out: list[Release[T]] = []
        self._flush_held(out)
        candidate = self._candidate
        if candidate is not None:
            self._candidate = None
            self._resync(candidate[0], candidate[1], candidate[2], out)
        return out

    def reset(self) -> None:
        """Forget the stream: drop held packets; the next packet starts afresh.

        Counters in :attr:`stats` are kept, and the adapted latency too.
        """
        self._next = None
        self._held.clear()
        self._candidate = None
        self._history[:] = bytes(len(self._history))

    # -- internals ---------------------------------------------------------

    def _start(
        self,
        ext: int,
        sequence: int,
        timestamp: int,
        item: T,
        out: list[Release[T]],
        *,
        resynced: bool,
    ) -> None:
        self._next = ext
        self._highest = ext
        self._release(ext, sequence, timestamp, item, out, resynced=resynced)

    def _accept(
        self, sequence: int, timestamp: int, item: T, now: float, out: list[Release[T]]
    ) -> None:
        """Place a packet of a started stream (the rules of the module docstring)."""
        stats = self.stats
        nxt = self._next
        assert nxt is not None
        d = seq_diff(sequence, nxt % SEQ_MOD)
        if d > self._max_gap or d < -self._max_gap:
            self._far(sequence, timestamp, item, now, out)
            return
        if d < 0:
            self._drop_old(nxt + d)
            return
        ext = nxt + d
        if ext in self._held:
            stats.duplicates += 1
            return
        if self._candidate is not None:
            # The current stream goes on: the far-off packet was a stray.
            self._candidate = None
            stats.discarded += 1
        if ext < self._highest:
            stats.reordered += 1
            if self._held and ext == nxt:
                self._observe_wait(now)
        else:
            self._highest = ext
        if d >= self._capacity:
            # The window overflows: force out what cannot be held any longer.
            stats.overflows += 1
            self._release_before(ext - self._capacity + 1, out, ext, timestamp)
            if ext == self._next:
                self._release(ext, sequence, timestamp, item, out)
                self._drain(out)
                self._update_noticed()
                return
        elif d == 0:
            self._release(ext, sequence, timestamp, item, out)
            if self._held:
                self._drain(out)
                self._update_noticed()
            return
        if not self._held:
            self._noticed = now
        self._held[ext] = (sequence, timestamp, item, now)

    def _far(
        self, sequence: int, timestamp: int, item: T, now: float, out: list[Release[T]]
    ) -> None:
        """Handle a packet more than ``max_gap`` away from the stream."""
        candidate = self._candidate
        if candidate is not None:
            apart = seq_diff(sequence, candidate[0])
            if apart == 0:
                self.stats.duplicates += 1
                return
            if -self._capacity < apart < self._capacity:
                # Two packets agree: the sender restarted. Start at the earlier.
                self._candidate = None
                if apart > 0:
                    self._resync(candidate[0], candidate[1], candidate[2], out)
                    self._accept(sequence, timestamp, item, now, out)
                else:
                    self._resync(sequence, timestamp, item, out)
                    self._accept(*candidate, out)
                return
            self.stats.discarded += 1
        self._candidate = (sequence, timestamp, item, now)

    def _resync(self, sequence: int, timestamp: int, item: T, out: list[Release[T]]) -> None:
        """Flush the current stream and start a new one at ``sequence``."""
        self.stats.resyncs += 1
        self._flush_held(out)
        nxt = self._next
        assert nxt is not None
        # Place the new stream forwards of everything so far, keeping the
        # extended numbering monotonic.
        ext = nxt + (sequence - nxt) % SEQ_MOD
        self._history[:] = bytes(len(self._history))
        self._start(ext, sequence, timestamp, item, out, resynced=True)

    def _flush_held(self, out: list[Release[T]]) -> None:
        while self._held:
            self._skip_hole(out)
            self._drain(out)

    def _drop_old(self, ext: int) -> None:
        stats = self.stats
        if self._history[ext & self._history_mask] == _RELEASED:
            stats.duplicates += 1
            return
        stats.late += 1
        if self._max_latency != self._min_latency:
            # It came after its gap was declared: the wait was too short.
            self._latency = min(self._max_latency, self._latency * _LATENCY_HEADROOM)

    def _release(
        self,
        ext: int,
        sequence: int,
        timestamp: int,
        item: T,
        out: list[Release[T]],
        *,
        resynced: bool = False,
    ) -> None:
        out.append(JitterPacket(sequence, timestamp, item, resynced))
        self._history[ext & self._history_mask] = _RELEASED
        self._last_seq = ext
        self._last_ts = timestamp
        self._next = ext + 1
        self.stats.released += 1

    def _drain(self, out: list[Release[T]]) -> None:
        """Release held packets that directly follow the last release."""
        held = self._held
        nxt = self._next
        assert nxt is not None
        while nxt in held:
            sequence, timestamp, item, _ = held.pop(nxt)
            self._release(nxt, sequence, timestamp, item, out)
            nxt += 1

    def _update_noticed(self) -> None:
        if self._held:
            self._noticed = min(entry[3] for entry in self._held.values())

    def _gap(self, end: int, out: list[Release[T]], next_ts: int, next_ext: int) -> None:
        """Declare ``[self._next, end)`` lost; ``next_*`` is the packet after the gap."""
        start = self._next
        assert start is not None
        count = end - start
        # Interpolate the expected timestamp between the packets around the gap.
        span = next_ext - self._last_seq
        step = ts_diff(next_ts, self._last_ts) * (start - self._last_seq)
        expected = ts_add(self._last_ts, step // span)
        out.append(JitterGap(start % SEQ_MOD, count, expected))
        history, mask = self._history, self._history_mask
        for ext in range(max(start, end - len(history)), end):
            history[ext & mask] = _LOST
        self._next = end
        self.stats.lost += count
        self.stats.gaps += 1

    def _skip_hole(self, out: list[Release[T]]) -> None:
        """Declare the hole before the oldest held packet lost."""
        first = min(self._held)
        _, timestamp, _, _ = self._held[first]
        self._gap(first, out, timestamp, first)

    def _release_before(
        self, target: int, out: list[Release[T]], anchor_ext: int, anchor_ts: int
    ) -> None:
        """Release held packets and holes below ``target``.

        ``anchor_*`` is the incoming packet, used to interpolate a final gap
        when no held packet lies beyond it.
        """
        held = self._held
        while True:
            nxt = self._next
            assert nxt is not None
            if nxt >= target:
                break
            if nxt in held:
                self._drain(out)
                continue
            if held:
                first = min(held)  # every held packet lies after the hole
                self._gap(min(first, target), out, held[first][1], first)
            else:
                self._gap(target, out, anchor_ts, anchor_ext)
        self._drain(out)
        self._update_noticed()

    def _observe_wait(self, now: float) -> None:
        if self._max_latency == self._min_latency:
            return
        # The packet filled the oldest hole after waiting this long.
        wanted = (now - self._noticed) * _LATENCY_HEADROOM
        if wanted > self._latency:
            self._latency = min(self._max_latency, wanted)

    def _decay_latency(self, now: float) -> None:
        elapsed = now - self._last_now
        self._last_now = now
        if elapsed > 0.0 and self._latency > self._min_latency:
            self._latency = max(self._min_latency, self._latency - elapsed * _LATENCY_DECAY)
