from rxvoice.protocol.ssrcmap import SsrcMap


def test_held_items_are_released_in_order_on_mapping():
    m: SsrcMap[str] = SsrcMap(hold_time=1.0)
    m.hold(7, "a", 0.0)
    m.hold(7, "b", 0.1)
    assert m.user_of(7) is None
    assert m.next_expiry() == 1.0
    assert m.map(7, "u1") == ["a", "b"]
    assert m.user_of(7) == "u1"
    assert m.map(7, "u1") == []
    assert m.next_expiry() is None


def test_expiry_hands_back_old_items_only():
    m: SsrcMap[str] = SsrcMap(hold_time=1.0)
    m.hold(1, "old", 0.0)
    m.hold(1, "new", 0.8)
    assert list(m.expire(1.0)) == [(1, "old")]
    assert m.stats.expired == 1
    assert m.map(1, "u") == ["new"]


def test_hold_is_bounded_per_ssrc_and_in_ssrc_count():
    m: SsrcMap[int] = SsrcMap(hold_limit=3, max_unmapped=2)
    for i in range(5):
        m.hold(1, i, float(i))
    m.hold(2, 100, 10.0)
    m.hold(3, 200, 11.0)  # evicts SSRC 1, the oldest
    assert m.map(1, "u") == []
    assert m.map(2, "v") == [100]
    assert m.stats.overflow == 2 + 3


def test_user_keeps_identity_across_ssrc_change():
    m: SsrcMap[str] = SsrcMap()
    m.map(10, "alice")
    m.map(11, "alice")
    assert m.ssrcs_of("alice") == [10, 11]
    assert m.user_of(10) == m.user_of(11) == "alice"
    m.forget_user("alice")
    assert m.user_of(10) is None
    assert 11 not in m
