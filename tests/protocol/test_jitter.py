from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxvoice.errors import UsageError
from rxvoice.protocol.jitter import JitterBuffer, JitterGap, JitterPacket, Release
from rxvoice.protocol.seq import SequenceUnwrapper, seq_add, ts_add


def seqs(releases: list[Release[object]]) -> list[int]:
    return [r.sequence for r in releases]


def packets(releases: list[Release[object]]) -> list[JitterPacket[object]]:
    return [r for r in releases if isinstance(r, JitterPacket)]


def gaps(releases: list[Release[object]]) -> list[JitterGap]:
    return [r for r in releases if isinstance(r, JitterGap)]


def check_invariant(jb: JitterBuffer[object]) -> None:
    s = jb.stats
    assert s.received == s.released + s.duplicates + s.late + s.discarded + jb.held


# -- unit tests ----------------------------------------------------------------


def test_in_order_packets_are_released_immediately() -> None:
    jb: JitterBuffer[object] = JitterBuffer()
    for i in range(5):
        out = jb.push(i, i * 960, f"p{i}", now=i * 0.02)
        assert out == [JitterPacket(i, i * 960, f"p{i}")]
        assert jb.next_deadline() is None
    assert jb.stats.released == 5
    assert jb.held == 0


def test_reordered_packet_fills_the_hole() -> None:
    jb: JitterBuffer[object] = JitterBuffer()
    assert seqs(jb.push(1, 960, "a", 0.0)) == [1]
    assert jb.push(3, 2880, "c", 0.02) == []
    assert jb.held == 1
    assert seqs(jb.push(2, 1920, "b", 0.03)) == [2, 3]
    assert jb.stats.reordered == 1
    assert jb.stats.lost == 0
    assert jb.next_deadline() is None


def test_wraparound_out_of_order() -> None:
    jb: JitterBuffer[object] = JitterBuffer()
    out = jb.push(65533, 0, None, 0.0)
    for seq in (65535, 0, 65534, 1):
        out += jb.push(seq, 0, None, 0.01)
    assert seqs(out) == [65533, 65534, 65535, 0, 1]
    assert jb.held == 0


def test_duplicates_are_dropped() -> None:
    jb: JitterBuffer[object] = JitterBuffer()
    jb.push(10, 0, "a", 0.0)
    assert jb.push(10, 0, "a", 0.01) == []  # already released
    jb.push(12, 0, "c", 0.02)
    assert jb.push(12, 0, "c", 0.03) == []  # already held
    assert jb.stats.duplicates == 2
    assert jb.stats.late == 0
    check_invariant(jb)


def test_loss_becomes_a_gap_after_latency() -> None:
    jb: JitterBuffer[object] = JitterBuffer(latency=0.06)
    jb.push(100, 96_000, "a", 1.00)
    assert jb.push(103, 96_000 + 3 * 960, "d", 1.02) == []
    assert jb.next_deadline() == pytest.approx(1.08)
    assert jb.poll(1.07) == []
    out = jb.poll(1.08)
    assert out == [JitterGap(101, 2, 96_960), JitterPacket(103, 98_880, "d")]
    assert jb.stats.lost == 2
    assert jb.stats.gaps == 1
    assert jb.next_deadline() is None


def test_packet_after_its_gap_is_late() -> None:
    jb: JitterBuffer[object] = JitterBuffer(latency=0.05)
    jb.push(1, 0, "a", 0.0)
    jb.push(3, 1920, "c", 0.01)
    assert seqs(jb.poll(1.0)) == [2, 3]
    assert jb.push(2, 960, "b", 1.01) == []
    assert jb.stats.late == 1
    assert jb.stats.duplicates == 0
    check_invariant(jb)


def test_deadline_counts_from_the_first_packet_that_showed_the_hole() -> None:
    jb: JitterBuffer[object] = JitterBuffer(latency=0.06)
    jb.push(0, 0, None, 0.0)
    jb.push(2, 1920, None, 0.02)
    jb.push(3, 2880, None, 0.04)
    assert jb.next_deadline() == pytest.approx(0.08)
    jb.push(5, 4800, None, 0.06)
    # Filling hole 1 moves the deadline to hole 4, noticed when 5 arrived.
    assert seqs(jb.push(1, 960, None, 0.07)) == [1, 2, 3]
    assert jb.next_deadline() == pytest.approx(0.12)


def test_gap_timestamp_is_interpolated_across_wraparound() -> None:
    jb: JitterBuffer[object] = JitterBuffer()
    ts0 = 0xFFFFFFFF - 1000
    jb.push(65535, ts0, None, 0.0)
    jb.push(2, ts_add(ts0, 3 * 960), None, 0.01)
    out = jb.flush()
    assert out[0] == JitterGap(0, 2, ts_add(ts0, 960))
    assert seqs(out) == [0, 2]


def test_capacity_overflow_forces_release_with_gaps() -> None:
    jb: JitterBuffer[object] = JitterBuffer(capacity=4, latency=10.0)
    jb.push(0, 0, None, 0.0)
    for seq in (2, 3, 4):
        assert jb.push(seq, seq * 960, None, 0.01) == []
    out = jb.push(5, 5 * 960, None, 0.02)
    assert out == [
        JitterGap(1, 1, 960),
        *(JitterPacket(s, s * 960, None) for s in (2, 3, 4, 5)),
    ]
    assert jb.stats.overflows == 1
    assert jb.held == 0


def test_overflow_keeps_the_window_and_still_waits_for_recent_holes() -> None:
    jb: JitterBuffer[object] = JitterBuffer(capacity=4, latency=0.06)
    jb.push(0, 0, None, 0.0)
    out = jb.push(10, 9600, None, 0.02)  # 10 > capacity ahead, within max_gap
    # Everything more than capacity - 1 behind 10 is given up at once...
    assert out == [JitterGap(1, 6, 960)]
    # ... and 7, 8, 9 may still arrive within the latency.
    assert seqs(jb.push(8, 7680, None, 0.03)) == []
    assert seqs(jb.push(7, 6720, None, 0.04)) == [7, 8]
    assert seqs(jb.poll(0.08)) == [9, 10]
    assert jb.held <= jb.capacity


@pytest.mark.parametrize("restart", [10_000, 40_000])  # ahead / behind in serial arithmetic
def test_confirmed_restart_resyncs_without_a_huge_gap(restart: int) -> None:
    jb: JitterBuffer[object] = JitterBuffer(latency=0.06)
    jb.push(100, 0, "a", 0.0)
    jb.push(102, 1920, "c", 0.01)  # held
    assert jb.push(restart, 123, "x", 0.02) == []  # far off: could be a stray
    assert jb.held == 2
    assert jb.next_deadline() == pytest.approx(0.07)
    out = jb.push(restart + 1, 1083, "y", 0.03)  # confirmed
    assert out == [
        JitterGap(101, 1, 960),
        JitterPacket(102, 1920, "c"),
        JitterPacket(restart, 123, "x", resynced=True),
        JitterPacket(restart + 1, 1083, "y"),
    ]
    assert jb.stats.resyncs == 1
    assert sum(g.count for g in gaps(out)) == 1
    # A straggler of the old stream is a stray now, dropped once the new stream goes on.
    assert jb.push(101, 960, "b", 0.04) == []
    assert seqs(jb.push(restart + 2, 2043, "z", 0.05)) == [restart + 2]
    assert jb.stats.discarded == 1
    assert jb.next_deadline() is None
    check_invariant(jb)


def test_restart_confirmed_out_of_order_starts_at_the_earlier_packet() -> None:
    jb: JitterBuffer[object] = JitterBuffer()
    jb.push(100, 0, None, 0.0)
    jb.push(20_001, 960, None, 0.01)
    assert jb.push(20_000, 0, None, 0.02) == [
        JitterPacket(20_000, 0, None, resynced=True),
        JitterPacket(20_001, 960, None),
    ]


def test_unconfirmed_restart_is_accepted_after_latency() -> None:
    jb: JitterBuffer[object] = JitterBuffer(latency=0.06)
    jb.push(100, 0, None, 0.0)
    jb.push(10_000, 5, None, 0.02)
    assert jb.next_deadline() == pytest.approx(0.08)
    assert jb.poll(0.07) == []
    assert jb.poll(0.08) == [JitterPacket(10_000, 5, None, resynced=True)]
    assert seqs(jb.push(10_001, 965, None, 0.1)) == [10_001]


def test_stray_far_packet_is_discarded_while_the_stream_goes_on() -> None:
    jb: JitterBuffer[object] = JitterBuffer()
    jb.push(100, 0, None, 0.0)
    assert jb.push(30_000, 0, None, 0.01) == []
    assert seqs(jb.push(101, 960, None, 0.02)) == [101]
    assert jb.push(50_000, 0, None, 0.03) == []  # another, unrelated stray
    assert jb.push(10_000, 0, None, 0.03) == []  # ... replaces it
    assert seqs(jb.push(102, 1920, None, 0.04)) == [102]
    assert jb.poll(10.0) == []
    assert jb.stats.discarded == 3
    assert jb.stats.resyncs == 0
    check_invariant(jb)


def test_flush_accepts_a_pending_restart_last() -> None:
    jb: JitterBuffer[object] = JitterBuffer()
    jb.push(100, 0, None, 0.0)
    jb.push(102, 1920, None, 0.0)
    jb.push(9_000, 0, None, 0.0)
    assert jb.flush() == [
        JitterGap(101, 1, 960),
        JitterPacket(102, 1920, None),
        JitterPacket(9_000, 0, None, resynced=True),
    ]


def test_jump_within_max_gap_is_loss_not_a_restart() -> None:
    jb: JitterBuffer[object] = JitterBuffer(capacity=8, max_gap=250)
    jb.push(0, 0, None, 0.0)
    out = jb.push(200, 200 * 960, None, 0.02)
    assert out == [JitterGap(1, 192, 960)]  # all but the last capacity - 1
    assert jb.stats.resyncs == 0
    assert jb.stats.overflows == 1
    assert seqs(jb.poll(1.0)) == [193, 200]


def test_far_behind_resyncs_but_slightly_behind_is_late() -> None:
    jb: JitterBuffer[object] = JitterBuffer(max_gap=250)
    jb.push(5000, 0, None, 0.0)
    assert jb.push(4800, 0, None, 0.01) == []  # 200 behind: late
    assert jb.stats.late == 1
    assert jb.push(4000, 0, None, 0.02) == []  # 1000 behind: the sender restarted?
    out = jb.push(4001, 960, None, 0.03)  # yes
    assert out == [JitterPacket(4000, 0, None, resynced=True), JitterPacket(4001, 960, None)]
    check_invariant(jb)


def test_next_deadline_and_poll() -> None:
    jb: JitterBuffer[object] = JitterBuffer(latency=0.1)
    assert jb.next_deadline() is None
    jb.push(0, 0, None, 5.0)
    assert jb.next_deadline() is None
    jb.push(2, 1920, None, 5.5)
    deadline = jb.next_deadline()
    assert deadline == pytest.approx(5.6)
    assert jb.poll(5.59) == []
    assert seqs(jb.poll(deadline)) == [1, 2]  # type: ignore[arg-type]
    assert jb.next_deadline() is None


def test_flush_releases_everything_in_order_and_the_stream_continues() -> None:
    jb: JitterBuffer[object] = JitterBuffer()
    jb.push(0, 0, None, 0.0)
    for seq in (5, 3, 2):
        jb.push(seq, seq * 960, None, 0.01)
    out = jb.flush()
    assert out == [
        JitterGap(1, 1, 960),
        JitterPacket(2, 1920, None),
        JitterPacket(3, 2880, None),
        JitterGap(4, 1, 3840),
        JitterPacket(5, 4800, None),
    ]
    assert jb.flush() == []
    assert seqs(jb.push(6, 5760, None, 0.02)) == [6]


def test_reset_starts_a_new_stream() -> None:
    jb: JitterBuffer[object] = JitterBuffer()
    jb.push(0, 0, None, 0.0)
    jb.push(2, 0, None, 0.0)
    jb.reset()
    assert jb.held == 0
    assert jb.next_deadline() is None
    assert jb.push(30_000, 0, None, 1.0) == [JitterPacket(30_000, 0, None)]
    assert jb.stats.resyncs == 0


def test_adaptive_latency_grows_within_bounds_and_decays() -> None:
    jb: JitterBuffer[object] = JitterBuffer(latency=0.04, max_latency=0.2)
    jb.push(0, 0, None, 0.0)
    jb.push(2, 0, None, 0.02)
    jb.push(1, 0, None, 0.055)  # waited 35 ms of the 40 ms
    assert jb.latency == pytest.approx(0.035 * 1.5)
    jb.push(4, 0, None, 0.06)
    jb.poll(1.0)  # 3 given up
    jb.push(3, 0, None, 1.0)  # ... but it came: the wait was too short
    assert jb.latency > 0.035 * 1.5
    seq, now = 5, 2.0
    for _ in range(10):  # keep declaring gaps that the network then fills late
        jb.push(seq, 0, None, now)
        jb.push(seq + 2, 0, None, now)
        jb.poll(now + 1.0)
        jb.push(seq + 1, 0, None, now + 1.0)
        seq, now = seq + 3, now + 2.0
    assert jb.latency == pytest.approx(0.2)  # capped
    jb.push(seq, 0, None, now + 100.0)  # a calm stretch: back to the base latency
    assert jb.latency == pytest.approx(0.04)


def test_fixed_latency_never_changes() -> None:
    jb: JitterBuffer[object] = JitterBuffer(latency=0.05)
    jb.push(0, 0, None, 0.0)
    jb.push(2, 0, None, 0.0)
    jb.push(1, 0, None, 0.049)
    jb.push(4, 0, None, 0.05)
    jb.poll(1.0)
    jb.push(3, 0, None, 1.0)
    assert jb.latency == 0.05


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity": 0},
        {"latency": -1.0},
        {"latency": 0.1, "max_latency": 0.05},
        {"capacity": 64, "max_gap": 10},
        {"max_gap": 40_000},
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        JitterBuffer(**kwargs)


def test_invalid_sequence() -> None:
    with pytest.raises(UsageError):
        JitterBuffer[None]().push(65536, 0, None, 0.0)


# -- property tests ------------------------------------------------------------


Arrivals = list[tuple[float, int, int, int]]  # (arrival time, seq, ts, item id), by time


@dataclass
class Run:
    """What a simulated network delivered and what the buffer did with it."""

    pushed: Arrivals
    releases: list[tuple[float, Release[int]]]  # (release time, release)
    jb: JitterBuffer[int]
    peak_held: int  # the most packets held at once, after any push or poll


def simulate(jb: JitterBuffer[int], arrivals: Arrivals, *, flush: bool = True) -> Run:
    """Push ``arrivals`` (sorted by time), polling at every deadline on the way."""
    releases: list[tuple[float, Release[int]]] = []
    peak = 0
    for arrival, seq, ts, item in arrivals:
        while (deadline := jb.next_deadline()) is not None and deadline <= arrival:
            releases += [(deadline, r) for r in jb.poll(deadline)]
            peak = max(peak, jb.held)
        releases += [(arrival, r) for r in jb.push(seq, ts, item, arrival)]
        peak = max(peak, jb.held)
    while flush and (deadline := jb.next_deadline()) is not None:
        releases += [(deadline, r) for r in jb.poll(deadline)]
    return Run(arrivals, releases, jb, peak)


@st.composite
def network(draw: st.DrawFn, max_packets: int = 120) -> Arrivals:
    """A 20 ms packet stream through a network that delays, drops and duplicates."""
    start = draw(st.one_of(st.integers(0, 65535), st.integers(65500, 65535)))
    ts0 = draw(st.integers(0, 2**32 - 1))
    fates = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["ok", "ok", "ok", "lost", "dup"]),
                st.integers(0, 150),  # delay in ms; integers keep the arithmetic exact
                st.integers(0, 150),  # delay of a duplicate copy
            ),
            min_size=1,
            max_size=max_packets,
        )
    )
    arrivals = []
    for i, (fate, delay_ms, dup_delay_ms) in enumerate(fates):
        if fate == "lost":
            continue
        delays = (delay_ms, dup_delay_ms) if fate == "dup" else (delay_ms,)
        for delay in delays:
            arrival = (20 * i + delay) / 1000
            arrivals.append((arrival, seq_add(start, i), ts_add(ts0, 960 * i), i))
    if not arrivals:  # the network lost everything: deliver the first one anyway
        arrivals.append((0.0, start, ts0, 0))
    arrivals.sort(key=lambda a: a[0])
    return arrivals


latencies = st.sampled_from([0.0, 0.02, 0.06, 0.1])


def check_contiguous(run: Run) -> None:
    """Packets and gaps cover a contiguous, strictly increasing sequence range."""
    unwrap = SequenceUnwrapper()
    expected: int | None = None
    for _, r in run.releases:
        ext = unwrap.unwrap(r.sequence)
        if isinstance(r, JitterPacket) and r.resynced:
            expected = None
        if expected is not None:
            assert r.sequence == expected % 65536
        if isinstance(r, JitterGap):
            assert r.count >= 1
            expected = ext + r.count
            for _ in range(r.count - 1):  # keep the unwrapper in step
                unwrap.unwrap(seq_add(r.sequence, _ + 1))
        else:
            expected = ext + 1


@given(network(), latencies, st.sampled_from([2, 8, 64]))
def test_property_safety(arrivals: Arrivals, latency: float, capacity: int) -> None:
    jb: JitterBuffer[int] = JitterBuffer(capacity=capacity, latency=latency)
    run = simulate(jb, arrivals)
    check_contiguous(run)
    released = [r for _, r in run.releases if isinstance(r, JitterPacket)]
    # No duplicates, and every released packet was pushed with that seq and ts.
    ids = [r.item for r in released]
    assert len(ids) == len(set(ids))
    pushed = {item: (seq, ts) for _, seq, ts, item in arrivals}
    for r in released:
        assert pushed[r.item] == (r.sequence, r.timestamp)
    # Gap timestamps are interpolated exactly on a 960-per-packet stream.
    first_seq, first_ts = arrivals[0][1], arrivals[0][2]
    for _, rel in run.releases:
        if isinstance(rel, JitterGap):
            offset = (rel.sequence - first_seq) % 65536
            assert rel.timestamp == ts_add(first_ts, 960 * offset)
    # Bounded depth: at most capacity - 1 waiting, plus one far-off candidate.
    assert run.peak_held <= capacity
    # Everything was released or counted, and nothing is held at the end.
    assert jb.held == 0
    check_invariant(jb)  # type: ignore[arg-type]
    assert jb.stats.resyncs == 0


@given(network(), latencies)
def test_property_in_time_packets_are_released_within_latency(
    arrivals: Arrivals, latency: float
) -> None:
    jb: JitterBuffer[int] = JitterBuffer(capacity=256, latency=latency)
    run = simulate(jb, arrivals)
    released_at = {r.item: t for t, r in run.releases if isinstance(r, JitterPacket)}
    first_item = arrivals[0][3]
    seen: set[int] = set()
    for k, (arrival, _, _, item) in enumerate(arrivals):
        if item in seen:
            continue  # a duplicate copy
        seen.add(item)
        if item < first_item:
            continue  # before the packet that started the stream
        # The hole this packet fills was noticed by the first later packet.
        later = [a for a, _, _, i in arrivals[:k] if i > item]
        if not later or arrival < min(later) + latency:
            assert item in released_at, f"packet {item} arrived in time but was lost"
    # Latency bound: no packet waits longer than the latency after arriving.
    first_arrival: dict[int, float] = {}
    for arrival, _, _, item in arrivals:
        first_arrival.setdefault(item, arrival)
    for item, t in released_at.items():
        assert first_arrival[item] <= t <= first_arrival[item] + latency + 1e-9
    assert jb.stats.overflows == 0


@given(
    st.lists(
        st.tuples(st.integers(0, 65535), st.integers(0, 50)),
        min_size=1,
        max_size=80,
    ),
    st.sampled_from([1, 4, 64]),
)
def test_property_arbitrary_sequences_never_break_invariants(
    events: list[tuple[int, int]], capacity: int
) -> None:
    """Random sequence numbers (restarts, strays, far jumps) keep the output sane."""
    jb: JitterBuffer[int] = JitterBuffer(capacity=capacity, latency=0.06, max_latency=0.3)
    arrivals = []
    now = 0.0
    for i, (seq, dt_ms) in enumerate(events):
        now += dt_ms / 1000
        arrivals.append((now, seq, 960 * seq, i))
    run = simulate(jb, arrivals)
    check_contiguous(run)
    ids = [r.item for _, r in run.releases if isinstance(r, JitterPacket)]
    assert len(ids) == len(set(ids))
    seq_of = {item: seq for _, seq, _, item in arrivals}
    for _, r in run.releases:
        if isinstance(r, JitterPacket):
            assert seq_of[r.item] == r.sequence
        else:
            assert 1 <= r.count <= jb.stats.lost
    assert jb.held == 0
    assert 0.06 <= jb.latency <= 0.3
    check_invariant(jb)  # type: ignore[arg-type]


@given(network(), latencies, st.sampled_from([2, 64]), st.booleans())
def test_property_push_next_is_push_without_the_release_objects(
    arrivals: Arrivals, latency: float, capacity: int, adaptive: bool
) -> None:
    """Trying push_next first (as the receiver does) releases and counts exactly as push."""
    max_latency = 0.3 if adaptive else None
    plain: JitterBuffer[int] = JitterBuffer(
        capacity=capacity, latency=latency, max_latency=max_latency
    )
    fast: JitterBuffer[int] = JitterBuffer(
        capacity=capacity, latency=latency, max_latency=max_latency
    )
    for arrival, seq, ts, item in arrivals:
        for jb, out in ((plain, expected := []), (fast, got := [])):
            while (deadline := jb.next_deadline()) is not None and deadline <= arrival:
                out += jb.poll(deadline)
            if jb is fast and jb.push_next(seq, ts, arrival):
                out.append(JitterPacket(seq, ts, item))
            else:
                out += jb.push(seq, ts, item, arrival)
        assert got == expected
        assert fast.stats == plain.stats
        assert (fast.latency, fast.held, fast.next_deadline()) == (
            plain.latency,
            plain.held,
            plain.next_deadline(),
        )
    assert fast.flush() == plain.flush()
