"""IdleStreams: which SSRCs have gone quiet, so operators can drop their state."""

from __future__ import annotations

from rxvoice.operators._common import IdleStreams


def test_quiet_streams_are_swept_at_most_once_per_period():
    idle: IdleStreams[int] = IdleStreams(after=60.0)
    assert idle.touch(1, 0.0) is False
    assert idle.touch(2, 0.0) is False
    assert idle.expired(0.0) == []  # a sweep: nobody quiet yet; the next is due at 60 s
    idle.touch(2, 50.0)
    assert idle.expired(59.0) == []  # not due
    assert idle.expired(61.0) == [1]  # 1 quiet for 61 s; 2 for 11 s
    assert idle.expired(115.0) == []  # not due (swept at 61 s), although 2 is quiet for 65 s
    assert idle.expired(121.0) == [2]
    assert idle.expired(500.0) == []  # forgotten streams are not reported again


def test_a_stream_back_after_the_quiet_period_is_reported_by_touch():
    idle: IdleStreams[str] = IdleStreams(after=60.0)
    idle.touch("a", 0.0)
    assert idle.touch("a", 59.0) is False
    assert idle.touch("a", 119.5) is True
    assert idle.touch("a", 120.0) is False


def test_a_clock_gone_far_back_does_not_stop_the_sweeps():
    idle: IdleStreams[int] = IdleStreams(after=60.0)
    idle.touch(1, 1e9)  # one far-future stamp (another clock merged in)
    assert idle.expired(1e9) == []
    idle.touch(2, 0.0)
    idle.touch(3, 0.0)
    idle.touch(3, 100.0)
    assert idle.expired(100.0) == [2]  # swept although the next sweep was due at 1e9 + 60
