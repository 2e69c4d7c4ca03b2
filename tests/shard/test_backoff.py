"""The reconnect delay policy: exponential bound, full jitter, capped, reset after success."""

from __future__ import annotations

import random

import pytest

from rxvoice.errors import UsageError
from rxvoice.shard.backoff import Backoff


def test_delays_stay_under_a_doubling_capped_bound() -> None:
    backoff = Backoff(base=0.5, cap=10.0, rng=random.Random(1))
    bounds = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    for attempt, bound in enumerate(bounds):
        assert backoff.bound(attempt) == bound
        delay = backoff.next_delay()
        assert 0.0 <= delay <= bound
    assert backoff.attempts == len(bounds)
    # Far past any float range, the bound is still the cap.
    assert backoff.bound(10_000) == 10.0


def test_jitter_spreads_delays_and_a_seed_repeats_them() -> None:
    def run(seed: int) -> list[float]:
        backoff = Backoff(base=1.0, cap=4.0, rng=random.Random(seed))
        return [backoff.next_delay() for _ in range(200)]

    assert run(7) == run(7)
    assert run(7) != run(8)
    capped = run(7)[2:]  # bound 4.0 from the third attempt on
    assert min(capped) < 1.0 and max(capped) > 3.0  # not a constant: clients spread out
    assert max(capped) <= 4.0


def test_reset_starts_over_from_base() -> None:
    backoff = Backoff(base=1.0, cap=60.0, rng=random.Random(3))
    for _ in range(6):
        backoff.next_delay()
    assert backoff.bound(backoff.attempts) == 60.0
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay() <= 1.0


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_bad_settings_are_refused(base: float, cap: float) -> None:
    with pytest.raises(UsageError):
        Backoff(base=base, cap=cap)
