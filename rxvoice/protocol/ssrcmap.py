"""SSRC to user attribution, with a short hold for packets that arrive first.

Discord tells receivers which user sends on an SSRC only through op 5
(Speaking), and the first RTP packets often overtake it. Those packets cannot
be attributed or DAVE-decrypted yet, so they are held here (bounded in count and
age) and handed back in order once the mapping arrives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["SsrcMap", "SsrcMapStats"]

T = TypeVar("T")


@dataclass(slots=True)
class SsrcMapStats:
    """Counters of an :class:`SsrcMap`."""

    held: int = 0
    released: int = 0
    expired: int = 0
    overflow: int = 0


class SsrcMap(Generic[T]):
    """Maps SSRCs to user ids and holds items for SSRCs not mapped yet.

    A user keeps one identity when their SSRC changes (for example after they
    reconnect): every SSRC they used maps to the same user id.

    Args:
        hold_time: Seconds an item may wait for its SSRC's mapping.
        hold_limit: The most items held per SSRC; the oldest is dropped beyond it.
        max_unmapped: The most distinct unmapped SSRCs held at once.
    """

    def __init__(
        self, *, hold_time: float = 1.0, hold_limit: int = 50, max_unmapped: int = 64
    ) -> None:
        self.hold_time = hold_time
        self.hold_limit = hold_limit
        self.max_unmapped = max_unmapped
        self._users: dict[int, str] = {}
        self._held: dict[int, deque[tuple[float, T]]] = {}
        self.stats = SsrcMapStats()
        # The dict's own lookup: it runs for every received packet.
        self.user_of: Callable[[int], str | None] = self._users.get
        """The user sending on an SSRC, or ``None`` if not known yet."""

    def __contains__(self, ssrc: object) -> bool:
        return ssrc in self._users

    def ssrcs_of(self, user_id: str) -> list[int]:
        """Every SSRC seen for ``user_id``, oldest first."""
        return [s for s, u in self._users.items() if u == user_id]

    def map(self, ssrc: int, user_id: str) -> list[T]:
        """Record that ``user_id`` sends on ``ssrc``; return the items held for it, in order."""
        self._users[ssrc] = user_id
        held = self._held.pop(ssrc, None)
        if not held:
            return []
        self.stats.released += len(held)
        return [item for _, item in held]

    def forget_user(self, user_id: str) -> None:
        """Drop every mapping of ``user_id`` (they left the call)."""
        for ssrc in self.ssrcs_of(user_id):
            del self._users[ssrc]

    def hold(self, ssrc: int, item: T, now: float) -> None:
        """Keep ``item`` until ``ssrc`` is mapped or it expires."""
        queue = self._held.get(ssrc)
        if queue is None:
            if len(self._held) >= self.max_unmapped:
                # Too many unknown sources (garbage or an attack): drop the oldest one.
                oldest = min(self._held, key=lambda s: self._held[s][0][0])
                self.stats.overflow += len(self._held.pop(oldest))
            queue = self._held[ssrc] = deque()
        if len(queue) >= self.hold_limit:
            queue.popleft()
            self.stats.overflow += 1
        queue.append((now, item))
        self.stats.held += 1

    def expire(self, now: float) -> Iterator[tuple[int, T]]:
        """Yield ``(ssrc, item)`` for held items older than ``hold_time`` and forget them."""
        deadline = now - self.hold_time
        for ssrc in list(self._held):
            queue = self._held[ssrc]
            while queue and queue[0][0] <= deadline:
                self.stats.expired += 1
                yield ssrc, queue.popleft()[1]
            if not queue:
                del self._held[ssrc]

    def next_expiry(self) -> float | None:
        """When the oldest held item expires, or ``None`` when nothing is held."""
        if not self._held:
            return None
        return min(q[0][0] for q in self._held.values()) + self.hold_time

    def clear(self) -> None:
        """Forget every mapping and held item."""
        self._users.clear()
        self._held.clear()
