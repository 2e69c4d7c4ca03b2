"""Connection behaviour that needs no server: streams, misuse, secrets."""

from __future__ import annotations

import pytest

from rxvoice import Connection, ConnectionState, Secret
from rxvoice.errors import UsageError


def make() -> Connection:
    return Connection(
        guild_id=1, channel_id=2, user_id=3, session_id="s", token="voice-token", endpoint="h:1"
    )


def test_state_replays_its_current_value_and_other_streams_do_not() -> None:
    conn = make()
    early: list[ConnectionState] = []
    conn.state.subscribe(early.append)
    conn.force_close()
    late: list[ConnectionState] = []
    subscription = conn.state.subscribe(late.append)
    assert early == [ConnectionState.IDLE, ConnectionState.CLOSED]
    assert late == [ConnectionState.CLOSED]  # a late subscriber gets the current state
    subscription.dispose()
    conn.force_close()  # idempotent: no new state, nothing after dispose
    assert late == [ConnectionState.CLOSED]


def test_many_subscribers_each_get_every_value_and_may_unsubscribe() -> None:
    conn = make()
    a: list[object] = []
    b: list[object] = []
    sub_a = conn.on_diagnostic.subscribe(a.append)
    conn.on_diagnostic.subscribe(b.append)
    conn._diagnose("x", "one")
    sub_a.dispose()
    conn._diagnose("x", "two")
    assert [d.detail for d in a] == ["one"]  # type: ignore[attr-defined]
    assert [d.detail for d in b] == ["one", "two"]  # type: ignore[attr-defined]


async def test_close_completes_every_stream() -> None:
    conn = make()
    done: list[str] = []
    conn.on_audio_frame.subscribe(on_completed=lambda: done.append("audio"))
    conn.state.subscribe(on_completed=lambda: done.append("state"))
    await conn.close()
    assert sorted(done) == ["audio", "state"]


async def test_sending_before_ready_is_a_usage_error() -> None:
    conn = make()
    with pytest.raises(UsageError):
        await conn.send_opus(b"\xf8\xff\xfe")
    with pytest.raises(UsageError):
        await conn.set_speaking(1)
    with pytest.raises(UsageError):
        await conn.send("{}")
    with pytest.raises(UsageError, match="shard"):
        await conn.request_voice()


def test_the_token_is_a_secret() -> None:
    conn = make()
    assert isinstance(conn.token, Secret)
    assert conn.token.reveal() == "voice-token"
    assert "voice-token" not in repr(conn)
    assert "voice-token" not in str(conn.token)
