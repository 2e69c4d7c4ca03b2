"""GatewayShard's frame handler on its own: any frame is survived, counted, never raised."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxvoice.errors import UsageError
from rxvoice.shard import GatewayShard, VoiceStateUpdate
from tests.integration.helpers import Recorder

TOKEN = "sekrit-token-value"

MALFORMED: list[str | bytes] = [
    "[1,2]",  # not an object (once an AttributeError that ended the shard)
    "[" * 100_000 + "]" * 100_000,  # once a RecursionError
    "not json",
    "",
    "null",
    '"op"',
    b"\x00\x01\x02binary",
    b"\xff\xfe\xfd",  # not UTF-8
    '{"d": 1}',  # no op
    '{"op": "0"}',
    '{"op": true}',
    '{"op": 0, "d": {}}',  # a dispatch without t
    '{"op": 0, "t": "READY", "d": null}',
    '{"op": 0, "t": "READY", "d": {"user": {"id": 5}, "session_id": "s"}}',
    '{"op": 0, "t": "READY", "d": {"user": {"id": "5"}}}',
    '{"op": 0, "t": "VOICE_STATE_UPDATE", "d": {"user_id": "1"}}',
    '{"op": 0, "t": "VOICE_SERVER_UPDATE", "d": []}',
    '{"op": 10, "d": {}}',
    '{"op": 10, "d": {"heartbeat_interval": -5}}',
    '{"op": 10, "d": {"heartbeat_interval": 1e999}}',
]


async def test_malformed_frames_are_counted_logged_without_the_token_and_survived(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    shard = GatewayShard(TOKEN)
    updates = Recorder(shard.voice_updates)
    for frame in MALFORMED:
        assert shard.handle_frame(frame) == []
    assert shard.stats.malformed_frames == len(MALFORMED)
    # An opcode Discord may add later is not malformed: ignored and counted apart.
    assert shard.handle_frame('{"op": 42, "d": null}') == []
    assert shard.stats.unknown_opcodes == 1
    # Still working: a valid dispatch after all that is delivered.
    state = {"guild_id": "1", "channel_id": "2", "user_id": "3", "session_id": "s"}
    shard.handle_frame(json.dumps({"op": 0, "t": "VOICE_STATE_UPDATE", "s": 5, "d": state}))
    assert [type(u) for u in updates.items] == [VoiceStateUpdate]
    assert json.loads(shard._heartbeat()) == {"op": 1, "d": 5}
    assert TOKEN not in caplog.text
    assert "malformed gateway frame" in caplog.text
    await shard.close()  # clean: nothing re-raised
    assert updates.completed


@pytest.mark.parametrize("url", ["gateway.discord.gg", "http://h/", "wss://", "wss://h:70000"])
def test_a_url_that_can_never_connect_is_refused_up_front(url: str) -> None:
    with pytest.raises(UsageError, match="gateway URL"):
        GatewayShard(TOKEN, url=url)


async def test_a_raising_subscriber_does_not_count_as_a_bad_frame() -> None:
    shard = GatewayShard(TOKEN)

    def boom(_: Any) -> None:
        raise RuntimeError("subscriber bug")

    shard.voice_updates.subscribe(boom)
    state = {"guild_id": "1", "channel_id": "2", "user_id": "3", "session_id": "s"}
    shard.handle_frame(json.dumps({"op": 0, "t": "VOICE_STATE_UPDATE", "s": 1, "d": state}))
    assert shard.stats.malformed_frames == 0
    await shard.close()


async def test_hello_identifies_without_a_session_and_resumes_with_one() -> None:
    shard = GatewayShard(TOKEN, intents=129)
    hello = '{"op": 10, "d": {"heartbeat_interval": 45000}}'
    (identify,) = map(json.loads, shard.handle_frame(hello))
    assert identify["op"] == 2 and identify["d"]["intents"] == 129
    ready = {
        "user": {"id": "10"},
        "session_id": "abc",
        "resume_gateway_url": "wss://resume.example",
    }
    shard.handle_frame(json.dumps({"op": 0, "t": "READY", "s": 1, "d": ready}))
    assert (shard.user_id, shard.session_id, shard.is_online) == ("10", "abc", True)
    # Discord's bare resume URL gets our version and encoding.
    assert shard._resume_url == "wss://resume.example/?v=10&encoding=json"
    (resume,) = map(json.loads, shard.handle_frame(hello))
    assert resume == {"op": 6, "d": {"token": TOKEN, "session_id": "abc", "seq": 1}}
    # op 9 with d false forgets the session: the next Hello identifies.
    shard.handle_frame('{"op": 9, "d": false}')
    assert shard.session_id is None
    assert json.loads(shard.handle_frame(hello)[0])["op"] == 2
    await shard.close()


@pytest.mark.parametrize(
    "url", ["ws://downgrade.example", "/relative", "wss://", 5, None, "wss://[::1"]
)
async def test_a_doubtful_resume_url_is_not_used(url: object) -> None:
    shard = GatewayShard(TOKEN)
    ready = {"user": {"id": "10"}, "session_id": "abc", "resume_gateway_url": url}
    shard.handle_frame(json.dumps({"op": 0, "t": "READY", "s": 1, "d": ready}))
    assert shard.session_id == "abc" and shard._resume_url is None
    await shard.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
payloads = st.fixed_dictionaries(
    {"op": st.integers(-1, 12) | json_values},
    optional={
        "d": json_values,
        "s": st.integers() | json_values,
        "t": st.sampled_from(["READY", "RESUMED", "VOICE_STATE_UPDATE", "VOICE_SERVER_UPDATE"])
        | json_values,
    },
)
frames = (
    json_values.map(json.dumps)
    | payloads.map(json.dumps)
    | st.binary(max_size=64)
    | st.text(max_size=64)
)


@given(st.lists(frames, min_size=1, max_size=8))
def test_fuzz_the_frame_handler_never_raises(batch: list[str | bytes]) -> None:
    async def feed() -> None:
        shard = GatewayShard(TOKEN)
        for frame in batch:
            replies = shard.handle_frame(frame)
            assert all(isinstance(r, str) for r in replies)
        await shard.close()

    asyncio.run(feed())
