"""group_by_user: one group per user that survives SSRC changes and ends on leave."""

from __future__ import annotations

from typing import Any

from reactivex import GroupedObservable, Observable
from reactivex import operators as ops

from rxvoice import operators as vops
from rxvoice.events import ClientDisconnect
from rxvoice.testing.marbles import DEFAULT_SPEAKERS, VoiceMarbles, voice_marbles
from rxvoice.testing.packets import ToneSpeaker

SPEAKERS = {**DEFAULT_SPEAKERS, "A": ToneSpeaker("1001", 11), "u": ToneSpeaker("", 9)}
LEAVES = {"L": ClientDisconnect("1001"), "M": ClientDisconnect("1002")}


def flatten(m: VoiceMarbles) -> Any:
    """Each group's items and completion as ``key:token`` / ``key:end``, timed."""

    def tag(group: GroupedObservable[str | None, Any]) -> Observable[str]:
        def label(notification: Any) -> str:
            if notification.kind == "C":
                return f"{group.key}:end"
            return f"{group.key}:{m.describe(notification.value)}"

        return group.pipe(ops.materialize(), ops.map(label))

    return ops.flat_map(tag)


def test_one_group_per_user_ending_when_the_user_leaves():
    with voice_marbles(payload="silence") as m:
        frames = m.hot("-1-b1-2-b2-3-b3-|")
        leaves = m.hot("------L----------", LEAVES)
        result = m.start(frames.pipe(vops.group_by_user(leaves), flatten(m)))
        # 1001 leaves at 120 ms; their frame 3 then opens a new group.
        assert result == m.exp(
            "-a-b-c(E)d-e-f-(x,y,|)",
            {
                "a": "1001:1",
                "b": "1002:b1",
                "c": "1001:2",
                "E": "1001:end",
                "d": "1002:b2",
                "e": "1001:3",
                "f": "1002:b3",
                "x": "1002:end",
                "y": "1001:end",
            },
        )


def test_a_user_who_comes_back_gets_a_new_group():
    with voice_marbles(payload="silence") as m:
        frames = m.hot("-1-2-3-|")
        leaves = m.hot("---L----", LEAVES)
        groups = m.start(frames.pipe(vops.group_by_user(leaves)), describe=False)
    keys = [(r.time, r.value.value.key) for r in groups if r.value.kind == "N"]
    assert keys == [(20, "1001"), (100, "1001")]


def test_the_group_survives_an_ssrc_change():
    with voice_marbles(payload="silence", speakers=SPEAKERS) as m:
        frames = m.hot("-1-2-A3-A4-|")
        result = m.start(frames.pipe(vops.group_by_user(), flatten(m)))
    labels = [r.value.value for r in result if r.value.kind == "N"]
    assert labels == ["1001:1", "1001:2", "1001:A3", "1001:A4", "1001:end"]


def test_unknown_users_are_dropped_or_grouped_under_none():
    unknown = {"x": m_frame(None, 1)}
    with voice_marbles(payload="silence") as m:
        frames = m.hot("-x-1-|", unknown)
        dropped = m.start(frames.pipe(vops.group_by_user(), flatten(m)))
    assert [r.value.value for r in dropped if r.value.kind == "N"] == ["1001:1", "1001:end"]
    with voice_marbles(payload="silence") as m:
        frames = m.hot("-x-1-|", unknown)
        kept = m.start(frames.pipe(vops.group_by_user(include_unknown=True), flatten(m)))
    assert [r.value.value for r in kept if r.value.kind == "N"] == [
        "None:1",
        "1001:1",
        "None:end",
        "1001:end",
    ]


def m_frame(user_id: str | None, n: int) -> Any:
    from rxvoice.events import AudioFrame
    from rxvoice.testing.packets import SILENCE_FRAME

    return AudioFrame(user_id, 1, n, n * 960, SILENCE_FRAME)


def test_errors_reach_the_groups_and_the_outer_stream():
    boom = RuntimeError("boom")
    with voice_marbles(payload="silence") as m:
        frames = m.hot("-1-#", error=boom)
        seen: list[str] = []

        def inner(group: GroupedObservable[str | None, Any]) -> None:
            group.subscribe(on_error=lambda e: seen.append(f"{group.key}:{e}"))

        result = m.start(frames.pipe(vops.group_by_user(), ops.do_action(inner)))
    assert result[-1].value.kind == "E"
    assert seen == ["1001:boom"]


def test_audio_keeps_flowing_after_the_departures_stream_ends():
    # A closing Connection completes on_client_disconnect before on_audio_frame;
    # an ended (or failed) departures stream must not end every later group.
    for ending in ("--|", "--#"):
        with voice_marbles(payload="silence") as m:
            frames = m.hot("-1-2-3-4-|")
            leaves = m.hot(ending, LEAVES)
            result = m.start(frames.pipe(vops.group_by_user(leaves), flatten(m)))
        labels = [r.value.value for r in result if r.value.kind == "N"]
        assert labels == ["1001:1", "1001:2", "1001:3", "1001:4", "1001:end"], ending
