from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rxvoice.audio.mixer import Mixer, mix_blocks
from rxvoice.errors import UsageError


def block(value: int, samples: int = 960) -> np.ndarray:
    return np.full((samples, 2), value, np.int16)


def level(pcm: np.ndarray) -> int:
    """The value of a constant block (asserting it is constant)."""
    assert (pcm == pcm[0, 0]).all()
    return int(pcm[0, 0])


# -- mix_blocks ----------------------------------------------------------------


def test_mix_blocks_sums() -> None:
    out = mix_blocks([block(1), block(2), block(-10)])
    assert out.shape == (960, 2)
    assert out.dtype == np.int16
    assert level(out) == -7


def test_mix_blocks_saturates_at_both_ends() -> None:
    assert level(mix_blocks([block(32767), block(1)])) == 32767
    assert level(mix_blocks([block(-32768), block(-1)])) == -32768
    assert level(mix_blocks([block(32767)] * 99)) == 32767
    assert level(mix_blocks([block(-32768)] * 99)) == -32768
    assert level(mix_blocks([block(32767), block(-32768)])) == -1


@pytest.mark.parametrize("count", [2, 99, 512, 513, 700])
def test_mix_blocks_is_exact_for_many_sources(count: int) -> None:
    # Up to 512 blocks use a float32 product, beyond that an int32 sum.
    rng = np.random.default_rng(count)
    blocks = [rng.integers(-32768, 32768, (960, 2), dtype=np.int16) for _ in range(count)]
    blocks[0][:4] = 32767  # force full-scale pile-ups at both ends
    for b in blocks[1:]:
        b[:2] = 32767
        b[2:4] = -32768
    exact = np.sum([b.astype(np.int64) for b in blocks], axis=0)
    assert (mix_blocks(blocks) == np.clip(exact, -32768, 32767)).all()
    small = [np.full((960, 2), 1 if i % 3 else -1, np.int16) for i in range(count)]
    assert level(mix_blocks(small)) == sum(1 if i % 3 else -1 for i in range(count))


def test_mix_blocks_empty_and_single() -> None:
    assert mix_blocks([]).shape == (960, 2)
    assert not mix_blocks([]).any()
    assert mix_blocks([], shape=(320,)).shape == (320,)
    one = block(5)
    out = mix_blocks([one])
    out[0, 0] = 0
    assert one[0, 0] == 5  # a copy, not the input


def test_mix_blocks_accepts_non_contiguous_blocks() -> None:
    wide = np.arange(960 * 4, dtype=np.int16).reshape(960, 4)
    a, b = wide[:, :2], wide[:, 2:]
    assert not a.flags.c_contiguous
    expected = a.astype(np.int32) + b
    assert (mix_blocks([a, b]) == np.clip(expected, -32768, 32767)).all()


def test_mix_blocks_rejects_mismatched_blocks() -> None:
    with pytest.raises(UsageError):
        mix_blocks([block(1), block(1, 480)])
    with pytest.raises(UsageError):
        mix_blocks([block(1).astype(np.int32), block(1).astype(np.int32)])


blocks_strategy = st.integers(1, 8).flatmap(
    lambda n: st.lists(
        hnp.arrays(np.int16, (4, 2), elements=st.integers(-32768, 32767)),
        min_size=n,
        max_size=n,
    )
)


@given(blocks_strategy, st.randoms(use_true_random=False))
def test_property_mixing_is_commutative(blocks: list[np.ndarray], rnd: random.Random) -> None:
    shuffled = list(blocks)
    rnd.shuffle(shuffled)
    assert (mix_blocks(blocks) == mix_blocks(shuffled)).all()


@given(blocks_strategy)
def test_property_mixing_saturates_and_never_wraps(blocks: list[np.ndarray]) -> None:
    exact = np.sum([b.astype(np.int64) for b in blocks], axis=0)
    out = mix_blocks(blocks)
    assert (out == np.clip(exact, -32768, 32767)).all()
    # Never wraps: the output never has the opposite sign of the true sum.
    assert not ((exact > 0) & (out < 0)).any()
    assert not ((exact < 0) & (out > 0)).any()


# -- Mixer ---------------------------------------------------------------------


def test_first_block_plays_in_the_tick_it_arrived_in() -> None:
    mixer: Mixer[str] = Mixer()
    assert level(mixer.mix()) == 0  # tick 0: nobody yet
    assert mixer.add("a", block(1), timestamp=1_000_000) == 1
    assert mixer.add("b", block(10), timestamp=7) == 1  # another clock, same tick
    assert level(mixer.mix()) == 11
    assert mixer.tick == 2


def test_alignment_by_timestamp_and_silence_fill() -> None:
    mixer: Mixer[str] = Mixer()
    ts = 0xFFFF_FFFF - 959  # crosses the 32-bit wrap on the second block
    assert mixer.add("a", block(1), timestamp=ts) == 0
    assert mixer.add("a", block(2), timestamp=(ts + 960) % 2**32) == 1
    assert mixer.add("a", block(4), timestamp=(ts + 3 * 960) % 2**32) == 3  # 2: lost
    assert mixer.add("b", block(100), timestamp=50) == 0
    assert mixer.add("b", block(200), timestamp=50 + 2 * 960) == 2
    assert [level(mixer.mix()) for _ in range(5)] == [101, 2, 200, 4, 0]


def test_out_of_order_blocks_are_placed_by_timestamp() -> None:
    mixer: Mixer[int] = Mixer()
    mixer.add(1, block(1), timestamp=0)
    assert mixer.add(1, block(3), timestamp=1920) == 2
    assert mixer.add(1, block(2), timestamp=960) == 1
    assert [level(mixer.mix()) for _ in range(3)] == [1, 2, 3]


def test_late_and_duplicate_blocks_are_dropped() -> None:
    mixer: Mixer[int] = Mixer()
    mixer.add(1, block(1), timestamp=0)
    mixer.add(1, block(2), timestamp=960)
    mixer.mix()
    assert mixer.add(1, block(9), timestamp=0) is None  # tick 0 already mixed
    assert mixer.add(1, block(9), timestamp=960) is None  # tick 1 already filled
    assert mixer.stats.late == 1
    assert mixer.stats.duplicates == 1
    assert level(mixer.mix()) == 2


def test_new_talk_spurt_is_reanchored() -> None:
    # discord.js keeps the timestamp running on only while it sends, so after a
    # pause the next block's timestamp points into the past.
    mixer: Mixer[int] = Mixer()
    mixer.add(1, block(1), timestamp=0)
    for _ in range(50):
        mixer.mix()
    assert mixer.add(1, block(7), timestamp=960) == 50
    assert mixer.add(1, block(8), timestamp=1920) == 51
    assert [level(mixer.mix()) for _ in range(2)] == [7, 8]
    assert mixer.stats.reanchors == 2


def test_timestamp_jump_reanchors_after_queued_audio() -> None:
    mixer: Mixer[int] = Mixer(max_ahead=10)
    mixer.add(1, block(1), timestamp=0)
    mixer.add(1, block(2), timestamp=960)
    assert mixer.add(1, block(3), timestamp=123_456_789) == 2
    assert [level(mixer.mix()) for _ in range(3)] == [1, 2, 3]
    assert mixer.queued(1) == 0


def test_long_and_short_blocks() -> None:
    mixer: Mixer[int] = Mixer()
    assert mixer.add(1, block(5, 1920), timestamp=0) == 0  # 40 ms: two ticks
    assert mixer.add(2, block(3, 480), timestamp=0) == 0  # 10 ms: padded
    first = mixer.mix()
    assert (first[:480] == 8).all()
    assert (first[480:] == 5).all()
    assert level(mixer.mix()) == 5


def test_explicit_ticks() -> None:
    mixer: Mixer[int] = Mixer()
    assert mixer.add(1, block(1), tick=2) == 2
    assert mixer.add(2, block(2), tick=2) == 2
    assert [level(mixer.mix()) for _ in range(3)] == [0, 0, 3]
    assert mixer.add(1, block(1), tick=0) is None


def test_mixer_saturates_and_keeps_a_private_copy() -> None:
    mixer: Mixer[int] = Mixer()
    data = block(30_000)
    for source in range(99):
        mixer.add(source, data, timestamp=0)
    data[:] = 0  # the caller reuses its buffer
    assert level(mixer.mix()) == 32767


def test_remove_clear_and_sources() -> None:
    mixer: Mixer[str] = Mixer()
    mixer.add("a", block(1), timestamp=0)
    mixer.add("b", block(2), timestamp=0)
    assert mixer.sources == {"a", "b"}
    assert mixer.queued("a") == 1
    mixer.remove("a")
    mixer.remove("zzz")
    assert level(mixer.mix()) == 2
    mixer.clear()
    assert mixer.sources == frozenset()
    assert mixer.queued("b") == 0


def test_prune_forgets_only_sources_quiet_for_long_enough() -> None:
    mixer: Mixer[str] = Mixer(max_ahead=3)
    mixer.add("gone", block(1), timestamp=0)
    mixer.add("long", np.ones((960 * 3, 2), np.int16), timestamp=0)  # fills ticks 0-2
    for _ in range(3):
        mixer.mix()
    mixer.add("talking", block(2), timestamp=0)  # queued for tick 3
    assert mixer.prune(3) == []  # "gone" filled tick 0: 3 ticks ago, not more
    mixer.mix()
    assert mixer.prune(3) == ["gone"]
    assert mixer.sources == {"long", "talking"}
    for _ in range(2):
        mixer.mix()
    assert mixer.prune(3) == ["long"]  # last filled tick 2; now tick 6
    mixer.mix()
    assert mixer.prune(3) == ["talking"]


# -- positions (issue 12 item 8: the mix under loss and jitter) -----------------


def test_a_source_is_anchored_at_the_first_tick_at_or_after_its_position() -> None:
    mixer: Mixer[str] = Mixer()
    assert mixer.add("a", block(1), timestamp=0, at=2.3) == 3
    assert mixer.add("b", block(2), timestamp=0, at=2.0) == 2
    # Positions computed from float seconds: a hair past a tick is that tick.
    assert mixer.add("c", block(3), timestamp=0, at=(200.62 - 200.02) / 0.02) == 30
    assert [level(mixer.mix()) for _ in range(4)] == [0, 0, 2, 1]


def test_the_rest_of_a_spurt_follows_its_timestamps_whenever_it_arrives() -> None:
    mixer: Mixer[int] = Mixer()
    assert mixer.add(1, block(1), timestamp=960, at=2.5) == 3  # the anchor
    mixer.mix()
    mixer.mix()
    # Frame 2 comes late (positions from arrival: 1.5 ticks late), frame 3 early:
    # both where their timestamps put them, not where they arrived.
    assert mixer.add(1, block(2), timestamp=1920, at=5.0) == 4
    assert mixer.add(1, block(4), timestamp=3840, at=5.0) == 6
    assert [level(mixer.mix()) for _ in range(5)] == [0, 1, 2, 0, 4]
    assert mixer.stats.reanchors == 1


def test_a_block_after_its_tick_is_dropped_and_its_spurt_keeps_its_ticks() -> None:
    mixer: Mixer[int] = Mixer()
    mixer.add(1, block(1), timestamp=0, at=0.0)
    for _ in range(3):
        mixer.mix()  # ticks 0-2 mixed; frame 1 and 2 missed theirs
    assert mixer.add(1, block(2), timestamp=960, at=1.0) is None
    assert mixer.add(1, block(4), timestamp=3 * 960, at=3.0) == 3  # not shifted
    assert mixer.stats.late == 1 and mixer.stats.reanchors == 1
    assert level(mixer.mix()) == 4


def test_a_spurt_whose_first_block_is_late_starts_at_the_tick_being_filled() -> None:
    mixer: Mixer[int] = Mixer()
    for _ in range(5):
        mixer.mix()
    assert mixer.add(1, block(1), timestamp=0, at=3.2) == 5  # tick 4 is gone
    assert mixer.add(1, block(2), timestamp=960, at=4.2) == 6  # the spurt follows
    assert mixer.stats.late_spurts == 1 and mixer.stats.late == 0


def test_a_jump_in_position_beyond_the_slack_is_a_new_spurt() -> None:
    # Discord clients stop the timestamp while quiet: the pause shows as a
    # position later than the timestamp says. Within the slack it is jitter.
    mixer: Mixer[int] = Mixer(slack=5)
    mixer.add(1, block(1), timestamp=0, at=0.0)
    assert mixer.add(1, block(2), timestamp=960, at=6.0) == 1  # 5 ticks late: jitter
    assert mixer.add(1, block(3), timestamp=1920, at=7.5) == 8  # 5.5: a new spurt at 8
    assert mixer.add(1, block(4), timestamp=2880, at=8.5) == 9
    # A restarted stream (a far timestamp, either way) re-anchors too.
    assert mixer.add(1, block(5), timestamp=2**31, at=20.0) == 20
    assert mixer.add(1, block(6), timestamp=0, at=21.0) == 21
    assert mixer.stats.reanchors == 4


def test_a_new_spurt_never_lands_before_queued_audio() -> None:
    mixer: Mixer[int] = Mixer()
    mixer.add(1, np.ones((960 * 4, 2), np.int16), timestamp=0, at=0.0)  # ticks 0-3
    assert mixer.add(1, block(9), timestamp=10**6, at=2.0) == 4


def test_a_position_too_far_ahead_plays_after_the_queued_audio() -> None:
    mixer: Mixer[int] = Mixer(max_ahead=10)
    mixer.add(1, block(1), timestamp=0, at=0.0)
    assert mixer.add(1, block(2), timestamp=960, at=500.0) == 1
    assert mixer.add(1, block(3), timestamp=1920, at=501.0) == 2


@given(
    st.floats(0, 30),
    st.permutations(range(12)),
    st.lists(st.integers(0, 3), min_size=12, max_size=12),
    st.lists(st.floats(-2.4, 2.4), min_size=12, max_size=12),
)
def test_property_a_spurt_is_placed_by_its_positions_whatever_the_arrival(
    start: float, order: list[int], ticks_between: list[int], jitter: list[float]
) -> None:
    """Frames of one spurt arrive in any order, ticks passing meanwhile.

    With smooth positions (call times), frame ``n`` plays in tick
    ``ceil(start + n)`` or is dropped as late; with positions jittered within
    the slack (arrival times), in ``ceil(start + j) + n`` where ``j`` is the
    first frame's jitter. Nothing shifts, unless the first frame came late.
    """
    mixer: Mixer[str] = Mixer(slack=5)
    first = {"smooth": 0.0, "jittered": jitter[order[0]]}
    for n, wait in zip(order, ticks_between, strict=True):
        for _ in range(wait):
            mixer.mix()
        for source, offset in (("smooth", 0.0), ("jittered", jitter[n])):
            if not math.isfinite(first[source]):
                continue  # its spurt came late: checked once
            anchoring = source not in mixer.sources
            due = math.ceil(start + first[source] - 1e-6) + n
            late_spurts = mixer.stats.late_spurts
            placed = mixer.add(source, block(n), timestamp=n * 960, at=start + n + offset)
            if anchoring and due < mixer.tick:  # the spurt's first frame came late
                assert placed == mixer.tick and mixer.stats.late_spurts == late_spurts + 1
                mixer.remove(source)
                first[source] = math.inf
            else:
                assert placed == (due if due >= mixer.tick else None)


def test_mixer_rejects_bad_input() -> None:
    mixer: Mixer[int] = Mixer()
    with pytest.raises(UsageError):
        mixer.add(1, block(1))
    with pytest.raises(UsageError):
        mixer.add(1, block(1), timestamp=0, tick=0)
    with pytest.raises(UsageError):
        mixer.add(1, np.zeros((960, 1), np.int16), timestamp=0)
    with pytest.raises(UsageError):
        mixer.add(1, np.zeros((960, 2), np.float32), timestamp=0)
    with pytest.raises(UsageError):
        mixer.add(1, block(1), tick=0, at=0.0)
    with pytest.raises(UsageError):
        mixer.add(1, block(1), timestamp=0, at=math.nan)
    with pytest.raises(UsageError):
        Mixer(frame_samples=0)
    with pytest.raises(UsageError):
        Mixer(slack=math.inf)


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 20), st.integers(-32768, 32767)),
        max_size=40,
    ),
    st.randoms(use_true_random=False),
)
def test_property_mixer_output_does_not_depend_on_source_order(
    adds: list[tuple[int, int, int]], rnd: random.Random
) -> None:
    """Same blocks, sources added in another order: same mix, every tick."""
    by_source: dict[int, list[tuple[int, int]]] = {}
    for source, tick, value in adds:
        by_source.setdefault(source, []).append((tick, value))
    order = list(by_source)
    shuffled = list(order)
    rnd.shuffle(shuffled)
    outputs = []
    for sources in (order, shuffled):
        mixer: Mixer[int] = Mixer(frame_samples=4)
        for source in sources:
            for tick, value in by_source[source]:
                mixer.add(source, np.full((4, 2), value, np.int16), tick=tick)
        outputs.append([mixer.mix() for _ in range(21)])
    for a, b in zip(*outputs, strict=True):
        assert (a == b).all()
