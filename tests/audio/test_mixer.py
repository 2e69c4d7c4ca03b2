from __future__ import annotations

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
        Mixer(frame_samples=0)


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
