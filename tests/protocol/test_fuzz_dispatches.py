"""Random input into the parsers of the voice session and of the main gateway's voice dispatches.

(Gateway messages themselves are fuzzed in test_gateway.py, datagrams in
test_fuzz_media.py, DAVE sequences in test_fuzz_dave.py.)
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from rxvoice.errors import MalformedMessage
from rxvoice.protocol.gateway import Speaking, serialize
from rxvoice.protocol.session import VoiceServerInfo, VoiceSession
from rxvoice.secret import Secret
from rxvoice.shard.base import VoiceServerUpdate, VoiceStateUpdate

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
snowflakes = st.integers(0, 2**64 - 1).map(str) | json_values
STATE = {"guild_id": "1", "channel_id": "2", "user_id": "3", "session_id": "abc"}
SERVER = {"guild_id": "1", "token": "voice-token", "endpoint": "host:443"}


def _mutated(base: dict[str, Any], data: st.DataObject) -> object:
    d = dict(base)
    for key in data.draw(st.lists(st.sampled_from(sorted(base)), max_size=3)):
        if data.draw(st.booleans()):
            d.pop(key, None)
        else:
            d[key] = data.draw(snowflakes)
    return data.draw(st.just(d) | json_values)


@given(data=st.data())
def test_voice_dispatch_parsers_raise_only_malformed_message(data: st.DataObject) -> None:
    for parser, base in ((VoiceStateUpdate.parse, STATE), (VoiceServerUpdate.parse, SERVER)):
        d = _mutated(base, data)
        try:
            parsed = parser(d)
        except MalformedMessage:
            continue
        assert isinstance(d, dict)
        assert parsed.guild_id == d.get("guild_id")


@given(frames=st.lists(st.text(max_size=80) | st.binary(max_size=80) | json_values.map(json.dumps)))
def test_a_voice_session_keeps_the_last_good_seq(frames: list[str | bytes]) -> None:
    info = VoiceServerInfo("1", "2", "3", "abc", Secret("t"), "host:443")
    session = VoiceSession(info, max_dave_protocol_version=1)
    good = serialize(Speaking(speaking=1, ssrc=5, delay=0, user_id="4"), seq=7)
    session.receive(good)
    for frame in frames:
        try:
            envelope = session.receive(frame)
        except MalformedMessage:
            continue
        if envelope.seq is not None:
            assert session.seq_ack == envelope.seq
    assert session.seq_ack is not None
