"""Connection behaviour that needs no server: streams, misuse, secrets."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from rxvoice import Connection, ConnectionState, Secret
from rxvoice.errors import ConnectionClosed, UsageError
from rxvoice.events import AudioFrame, Diagnostic, DiagnosticKind
from rxvoice.protocol import gateway as gw
from rxvoice.shard.base import VoiceStateUpdate, VoiceUpdate
from rxvoice.streams import EventStream
from rxvoice.testing.packets import encrypted_datagram

from .voice_harness import KEY, harness


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


@pytest.mark.parametrize(
    ("name", "value"), [("guild_id", "my-guild"), ("channel_id", -2), ("user_id", "007")]
)
def test_ids_that_are_not_snowflakes_are_refused_at_once(name: str, value: object) -> None:
    # Not at connect(), where a channel id DAVE cannot use ended in a bare time-out.
    ids: dict[str, object] = {"guild_id": 1, "channel_id": 2, "user_id": 3, name: value}
    with pytest.raises(UsageError, match=f"{name} must be a Discord id"):
        Connection(**ids)  # type: ignore[arg-type]
    assert make().channel_id == "2"  # ints are fine: ids as strings from here on


def test_the_token_is_a_secret() -> None:
    conn = make()
    assert isinstance(conn.token, Secret)
    assert conn.token.reveal() == "voice-token"
    assert "voice-token" not in repr(conn)
    assert "voice-token" not in str(conn.token)


# -- the voice session's gateway handling (no sockets: tests/voice_harness.py) ----------


def _ready(ssrc: int) -> gw.Ready:
    return gw.Ready(ssrc=ssrc, ip="127.0.0.1", port=9, modes=("aead_aes256_gcm_rtpsize",))


async def test_ip_discovery_does_not_hold_up_the_gateway_messages() -> None:
    h = harness(answer=False)  # the discovery never answers
    await asyncio.wait_for(h.feed(gw.Hello(heartbeat_interval=1000.0), _ready(11)), 1.0)
    await asyncio.wait_for(h.feed(gw.ClientsConnect(user_ids=("42",))), 1.0)
    assert h.conn.users == {"42"}
    assert h.conn.current_state is ConnectionState.DISCOVERING


async def test_a_second_ready_neither_blocks_the_gateway_nor_changes_our_ssrc() -> None:
    h = harness()
    await h.ready(ssrc=11)
    diagnostics: list[Diagnostic] = []
    h.conn.on_diagnostic.subscribe(diagnostics.append)
    h.udp.answer = False  # a discovery for another SSRC would wait forever
    await asyncio.wait_for(h.feed(_ready(99)), 1.0)
    await h.settle()
    await asyncio.wait_for(h.feed(gw.ClientsConnect(user_ids=("42",))), 1.0)
    assert h.conn.rtp is not None
    assert h.conn.ssrc == h.conn.rtp.ssrc == 11  # what we announce is what we send with
    assert h.udp.discovered == [11]
    assert len(h.ws.sent_of(gw.SelectProtocol)) == 1
    assert [d.kind for d in diagnostics] == [DiagnosticKind.UNEXPECTED_MESSAGE]
    assert h.conn.current_state is ConnectionState.READY and h.ws.aborts == 0


async def test_a_second_session_description_keeps_the_keys_and_the_dave_session() -> None:
    h = harness()
    await h.ready(dave_protocol_version=1)
    rtp, dave = h.conn.rtp, h.conn.dave
    assert rtp is not None and dave is not None and dave.session is not None
    sent = len(h.ws.sent)
    for key in (KEY, bytes(32)):  # the same op 4 again, then one with another key
        await h.feed(
            gw.SessionDescription(
                mode="aead_aes256_gcm_rtpsize", secret_key=key, dave_protocol_version=1
            )
        )
        await h.settle()
    assert h.conn.rtp is rtp and h.conn.dave is dave
    assert dave.session is not None  # not closed
    assert h.ws.sent[sent:] == []  # no new key package, no op 5 again
    assert h.readies == [None]


async def test_resumed_outside_a_resume_is_ignored() -> None:
    h = harness()
    await h.feed(gw.Hello(heartbeat_interval=1000.0), gw.Resumed())
    assert h.conn.current_state is not ConnectionState.READY
    assert not h.run.ready.done()


async def test_a_failed_ip_discovery_drops_the_websocket_with_a_reason() -> None:
    h = harness()

    async def fail(ssrc: int) -> object:
        raise TimeoutError("no IP discovery reply after 5 attempts")

    h.udp.discover = fail  # type: ignore[method-assign]
    await h.feed(gw.Hello(heartbeat_interval=1000.0), _ready(11))
    await h.settle()
    assert h.ws.aborts == 1
    assert h.run.close_reason is not None and "UDP setup failed" in h.run.close_reason
    assert not h.ws.sent_of(gw.SelectProtocol)


async def test_a_message_whose_handling_raises_is_counted_and_the_session_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = harness()
    await h.ready(dave_protocol_version=1)
    assert h.conn.dave is not None

    def broken(message: object, now: float) -> None:
        raise RuntimeError("a bug")

    h.conn.dave.handle = broken  # type: ignore[method-assign]
    await h.feed(gw.DavePrepareEpoch(protocol_version=1, epoch=1))
    await h.feed(gw.ClientsConnect(user_ids=("42",)))  # and the next message is handled
    assert h.conn.stats.failed_messages == 1
    assert h.conn.users == {"42"}
    assert "op 24 could not be handled" in caplog.text


# -- force_close while connect() waits for credentials -----------------------------------


class UnansweredShard:
    """A shard whose op 4 is never answered; ``hold`` keeps op 4 itself from finishing."""

    def __init__(self, *, hold: bool = False) -> None:
        self.user_id: str | None = "3"
        self.updates: EventStream[VoiceUpdate] = EventStream()
        self.asked = asyncio.Event()
        self.hold = hold

    @property
    def voice_updates(self) -> EventStream[VoiceUpdate]:
        return self.updates

    async def update_voice_state(
        self,
        guild_id: str,
        channel_id: str | None,
        *,
        self_mute: bool = False,
        self_deaf: bool = False,
    ) -> None:
        self.asked.set()
        if self.hold:
            await asyncio.get_running_loop().create_future()


@pytest.mark.parametrize("moment", ["sending op 4", "waiting for both", "one of two came"])
async def test_force_close_while_waiting_for_credentials_frees_the_connection(
    moment: str,
) -> None:
    shard = UnansweredShard(hold=moment == "sending op 4")
    for _ in range(3):  # the same shard serves many connections, one after the other
        conn = Connection(guild_id=1, channel_id=2, shard=shard)
        connecting = asyncio.ensure_future(conn.connect())
        await shard.asked.wait()
        shard.asked.clear()
        if moment == "one of two came":
            shard.updates.on_next(VoiceStateUpdate("1", "2", "3", "session"))
        assert shard.updates.observers  # the run's watch and the request's
        conn.force_close()
        with pytest.raises(ConnectionClosed):
            await connecting
        if conn._unwinding:
            await asyncio.wait(conn._unwinding)  # the cancelled run ends
        assert conn._session is None and conn._run is None
        assert shard.updates.observers == []
        collected = weakref.ref(conn)
        del conn, connecting
        await asyncio.sleep(0)  # one loop turn: the callbacks already scheduled let go
        gc.collect()
        assert collected() is None


async def test_a_session_ending_for_a_new_one_emits_what_its_receiver_held() -> None:
    h = harness()
    await h.ready(dave_protocol_version=0)
    await h.feed(gw.Speaking(speaking=1, ssrc=7, user_id="42"))
    frames: list[AudioFrame] = []
    h.conn.on_audio_frame.subscribe(frames.append)
    rtp = h.conn.rtp
    assert rtp is not None
    # Frame 1 is lost: frames 2 and 3 wait behind it in the jitter buffer.
    h.conn._on_datagrams([encrypted_datagram(rtp.cipher, n, 7, b"\xfc%d" % n) for n in (0, 2, 3)])
    assert [f.sequence for f in frames] == [0]
    h.run._end_session()  # a new session replaces this one (4006, a move...)
    assert [f.sequence for f in frames] == [0, 2, 3]
