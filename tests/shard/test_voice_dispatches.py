"""The two voice dispatches: parsed with the same snowflake check as the voice gateway."""

from __future__ import annotations

import pytest

from rxvoice.errors import MalformedMessage
from rxvoice.protocol.gateway import check_snowflake
from rxvoice.shard import VoiceServerUpdate, VoiceStateUpdate

STATE = {"guild_id": "41", "channel_id": "42", "user_id": "43", "session_id": "abc"}
SERVER = {"guild_id": "41", "token": "voice-secret", "endpoint": "127.0.0.1:9999"}


def test_valid_dispatches_parse() -> None:
    state = VoiceStateUpdate.parse(STATE)
    assert (state.guild_id, state.channel_id, state.user_id) == ("41", "42", "43")
    left = VoiceStateUpdate.parse({**STATE, "channel_id": None, "guild_id": None})
    assert left.channel_id is None and left.guild_id is None
    server = VoiceServerUpdate.parse(SERVER)
    assert server.token.reveal() == "voice-secret" and "voice-secret" not in repr(server)
    assert VoiceServerUpdate.parse({**SERVER, "endpoint": None}).endpoint is None


@pytest.mark.parametrize(
    "bad",
    [43, True, "", "-1", "0043", "4.3", "٤٣", "18446744073709551616", None, ["43"]],
)
def test_ids_are_strict_snowflakes_as_on_the_voice_gateway(bad: object) -> None:
    # Discord sends decimal u64 strings with one spelling; the shard once took ints too.
    with pytest.raises(MalformedMessage):
        VoiceStateUpdate.parse({**STATE, "user_id": bad})
    with pytest.raises(MalformedMessage):
        VoiceServerUpdate.parse({**SERVER, "guild_id": bad})
    with pytest.raises(MalformedMessage):
        check_snowflake(bad, "user_id")


@pytest.mark.parametrize(
    "d",
    [None, [], "x", {**STATE, "session_id": 5}, {k: v for k, v in STATE.items() if k != "user_id"}],
)
def test_malformed_voice_state(d: object) -> None:
    with pytest.raises(MalformedMessage):
        VoiceStateUpdate.parse(d)


@pytest.mark.parametrize("d", [None, {**SERVER, "token": None}, {**SERVER, "endpoint": 5}])
def test_malformed_voice_server(d: object) -> None:
    with pytest.raises(MalformedMessage):
        VoiceServerUpdate.parse(d)
