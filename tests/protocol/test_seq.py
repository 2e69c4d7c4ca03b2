from hypothesis import given
from hypothesis import strategies as st

from rxvoice.protocol.seq import (
    SequenceUnwrapper,
    seq_add,
    seq_diff,
    seq_gt,
    seq_lt,
    ts_add,
    ts_diff,
    ts_gt,
)

seqs = st.integers(0, 0xFFFF)
steps = st.integers(-0x7FFF, 0x7FFF)


def test_wraparound_ordering():
    assert seq_gt(0, 65535)
    assert seq_lt(65535, 0)
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_add(65535, 1) == 0
    assert ts_add(0xFFFFFFFF, 960) == 959
    assert ts_diff(959, 0xFFFFFFFF) == 960
    assert ts_gt(959, 0xFFFFFFFF)


@given(seqs, steps)
def test_diff_inverts_add(seq, step):
    assert seq_diff(seq_add(seq, step), seq) == step
    assert seq_gt(seq_add(seq, step), seq) == (step > 0)


@given(st.integers(0, 0xFFFFFFFF), st.integers(-(2**31) + 1, 2**31 - 1))
def test_ts_diff_inverts_add(ts, step):
    assert ts_diff(ts_add(ts, step), ts) == step


@given(seqs, st.lists(st.integers(-100, 300), max_size=300))
def test_unwrapper_follows_the_true_line(start, steps_):
    # A walk on the integer line, observed modulo 2**16, is recovered exactly
    # while each step stays under half the number space.
    u = SequenceUnwrapper()
    true = start
    assert u.unwrap(start) == start
    for step in steps_:
        true += step
        assert u.unwrap(true % 65536) == true
