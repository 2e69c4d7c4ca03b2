"""How long to wait before the next reconnect attempt: exponential, jittered, bounded."""

from __future__ import annotations

import random

from rxvoice.errors import UsageError

__all__ = ["Backoff"]


class Backoff:
    """Exponential backoff with full jitter, reset after a success.

    The ``n``-th delay in a row (``n`` from 0) is drawn uniformly from
    ``[0, min(cap, base * 2**n)]``: the bound doubles with each failure up to
    ``cap``, and the randomness spreads out clients that lost the same server at
    the same moment, so they do not all come back at once.

    Args:
        base: The first bound, in seconds.
        cap: The largest delay, in seconds.
        rng: The random source (seed one for reproducible delays).

    Example:
        >>> backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(7))
        >>> [round(backoff.next_delay(), 2) for _ in range(5)]
        [0.32, 0.3, 2.6, 0.58, 4.29]
        >>> backoff.reset(); backoff.attempts
        0
    """

    def __init__(
        self, *, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None
    ) -> None:
        if not 0.0 < base <= cap:
            raise UsageError("Backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        # Jitter spreads reconnects; it is not a secret.
        self.rng = rng if rng is not None else random.Random()  # noqa: S311
        self.attempts = 0

    def __repr__(self) -> str:
        return f"Backoff(base={self.base}, cap={self.cap}, attempts={self.attempts})"

    def bound(self, attempt: int) -> float:
        """The largest delay of the ``attempt``-th failure in a row (from 0)."""
        # min() on the exponent first: 2.0 ** 2000 would overflow.
        return min(self.cap, self.base * 2.0 ** min(attempt, 64))

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        bound = self.bound(self.attempts)
        self.attempts += 1
        return self.rng.uniform(0.0, bound)

    def reset(self) -> None:
        """Start over from ``base`` (after a connection succeeded)."""
        self.attempts = 0
