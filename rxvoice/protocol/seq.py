"""Serial-number arithmetic for RTP sequence numbers and timestamps.

RTP sequence numbers are 16-bit and timestamps 32-bit; both wrap. Comparisons
follow RFC 1982: ``a`` is "after" ``b`` when the forward distance from ``b`` to
``a`` is less than half the number space.
"""

from __future__ import annotations

__all__ = [
    "SEQ_MOD",
    "TS_MOD",
    "seq_add",
    "seq_diff",
    "seq_gt",
    "seq_lt",
    "ts_add",
    "ts_diff",
    "ts_gt",
    "SequenceUnwrapper",
]

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


def seq_add(seq: int, n: int) -> int:
    """Return ``seq + n`` modulo 2**16."""
    return (seq + n) % SEQ_MOD


def seq_diff(a: int, b: int) -> int:
    """Return the signed distance ``a - b`` in [-32768, 32767] across wraparound."""
    d = (a - b) % SEQ_MOD
    return d - SEQ_MOD if d >= SEQ_MOD // 2 else d


def seq_gt(a: int, b: int) -> bool:
    """Return whether sequence number ``a`` comes after ``b``."""
    return seq_diff(a, b) > 0


def seq_lt(a: int, b: int) -> bool:
    """Return whether sequence number ``a`` comes before ``b``."""
    return seq_diff(a, b) < 0


def ts_add(ts: int, n: int) -> int:
    """Return ``ts + n`` modulo 2**32."""
    return (ts + n) % TS_MOD


def ts_diff(a: int, b: int) -> int:
    """Return the signed distance ``a - b`` between 32-bit timestamps."""
    d = (a - b) % TS_MOD
    return d - TS_MOD if d >= TS_MOD // 2 else d


def ts_gt(a: int, b: int) -> bool:
    """Return whether timestamp ``a`` comes after ``b``."""
    return ts_diff(a, b) > 0


class SequenceUnwrapper:
    """Extends wrapping 16-bit sequence numbers into a monotonic integer line.

    The first value maps to itself; later values are placed at the nearest
    position to the highest one seen, so 65535 followed by 0 gives 65536.

    Example:
        >>> u = SequenceUnwrapper()
        >>> [u.unwrap(s) for s in (65534, 65535, 0, 1, 65535)]
        [65534, 65535, 65536, 65537, 65535]
    """

    __slots__ = ("_highest",)

    def __init__(self) -> None:
        self._highest: int | None = None

    def unwrap(self, seq: int) -> int:
        """Return the extended value of ``seq`` (0 <= seq < 2**16)."""
        if self._highest is None:
            self._highest = seq
            return seq
        ext = self._highest + seq_diff(seq, self._highest % SEQ_MOD)
        if ext > self._highest:
            self._highest = ext
        return ext
