"""jitter_buffer: per-SSRC reordering in virtual time."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reactivex import Observable

from rxvoice import operators as vops
from rxvoice.errors import UsageError
from rxvoice.events import AudioFrame, AudioGap
from rxvoice.testing.marbles import voice_marbles


def run(
    source: str, operator: Callable[[Observable[AudioFrame]], Observable[object]] | None = None
) -> tuple[list[object], list[object]]:
    """Pass ``source`` through the operator (default latency 60 ms): (result, helper)."""
    with voice_marbles(payload="silence") as m:
        op = operator or vops.jitter_buffer(latency=0.06)
        return m.start(m.hot(source).pipe(op)), m  # type: ignore[return-value]


def test_in_order_frames_pass_without_delay():
    result, m = run("-1-2-3-|")
    assert result == m.exp("-1-2-3-|")


def test_reorder():
    result, m = run("-1-3-2-|")
    assert result == m.exp("-1---(2,3)-|")


def test_reorder_across_the_wraparound():
    result, m = run("-65534-65536-65535-65537-|")
    assert result == m.exp("-65534---(65535,65536)-65537-|")


def test_loss_becomes_a_gap_after_the_latency():
    # 3 shows that 2 is missing at 60 ms; 60 ms later 2 is given up.
    result, m = run("-1-3-------|")
    assert result == m.exp("-1----(g2,3)----|")


def test_loss_of_several_packets_is_one_gap():
    result, m = run("-1-5-------|")
    assert result == m.exp("-1----(g2x3,5)----|")


def test_duplicate_is_dropped():
    result, m = run("-1-1-2-(2,3)-|")
    assert result == m.exp("-1---2-3-|")


def test_packet_after_its_gap_is_dropped():
    result, m = run("-1-3-----2-4-|")
    assert result == m.exp("-1----(g2,3)----4-|")


def test_ssrcs_are_independent():
    # a3 waits for a2 while b's frames flow.
    result, m = run("-a1-b1-a3-(b2,a2)-|")
    assert result == m.exp("-1-b1---(b2,2,3)-|")


def test_completion_flushes_held_frames_with_gaps():
    result, m = run("-1-3-|")
    assert result == m.exp("-1---(g2,3,|)")


def test_gap_markers_name_the_user_and_ssrc():
    result, _ = run("-b1-b3-----|")
    tokens = [r.value.value for r in result if r.value.kind == "N"]
    assert tokens == ["b1", "bg2", "b3"]
    with voice_marbles(payload="silence") as m:
        raw = m.start(m.hot("-b1-b3-----|").pipe(vops.jitter_buffer()), describe=False)
    [gap] = [r.value.value for r in raw if isinstance(getattr(r.value, "value", None), AudioGap)]
    assert (gap.user_id, gap.ssrc, gap.sequence, gap.count, gap.timestamp) == (
        "1002",
        2,
        2,
        1,
        1920,
    )


def test_capacity_bounds_what_is_held():
    # capacity 2: a frame 2 ahead of the hole forces the hole out at once.
    result, m = run("-1-3-4-|", vops.jitter_buffer(latency=1.0, capacity=2))
    assert result == m.exp("-1---(g2,3,4)-|")


def test_explicit_scheduler_times_the_deadlines():
    with voice_marbles(payload="silence") as m:
        op = vops.jitter_buffer(latency=0.04, scheduler=m.scheduler)
        assert m.start(m.hot("-1-3-----|").pipe(op)) == m.exp("-1---(g2,3)---|")


def test_error_passes_and_stops_the_timer():
    boom = RuntimeError("boom")
    with voice_marbles(payload="silence") as m:
        result = m.start(m.hot("-1-3-#", error=boom).pipe(vops.jitter_buffer()))
        assert result == m.exp("-1---#", error=boom)


def test_bad_arguments_fail_at_once():
    with pytest.raises(UsageError):
        vops.jitter_buffer(capacity=0)
    with pytest.raises(UsageError):
        vops.jitter_buffer(latency=-1.0)


@given(st.permutations(range(2, 9)))
def test_any_reordering_within_the_latency_is_undone(order: list[int]):
    """Operator level: frames displaced by less than the latency come out complete and in order.

    (The first frame starts the stream, so it comes first.)
    """
    marbles = "-1-" + "-".join(str(n) for n in order) + "-|"
    with voice_marbles(payload="silence") as m:
        result = m.start(m.hot(marbles).pipe(vops.jitter_buffer(latency=0.5)))
    values = [r.value.value for r in result if r.value.kind == "N"]
    assert values == list(range(1, 9))
    assert all(isinstance(v, int) for v in values)


def test_a_stream_quiet_for_a_minute_is_forgotten_and_starts_afresh():
    from reactivex.notification import OnCompleted, OnNext
    from reactivex.testing.recorded import Recorded

    from rxvoice.testing.marbles import SUBSCRIBED, values

    def at(seconds: float, notification: object) -> Recorded[object]:
        return Recorded(SUBSCRIBED + seconds, notification)  # type: ignore[arg-type]

    with voice_marbles() as m:
        # SSRC 1 goes quiet after 101, then restarts at 50 (behind 101): a
        # remembered buffer would drop it as late; a forgotten one starts
        # afresh. Its first packet after the pause sweeps the idle streams.
        frames = m.scheduler.create_hot_observable(
            at(0.02, OnNext(m.frame(100))),
            at(0.04, OnNext(m.frame(101))),
            at(70.0, OnNext(m.frame(50))),
            at(70.02, OnNext(m.frame(51))),
            at(70.04, OnCompleted()),
        )
        result = m.start(frames.pipe(vops.jitter_buffer()), describe=False)
    assert [f.sequence for f in values(result)] == [100, 101, 50, 51]
