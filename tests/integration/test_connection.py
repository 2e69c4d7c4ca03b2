"""rxvoice.Connection end to end against the sandbox: real sockets on loopback, DAVE on."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator

import pytest

from rxvoice.connection import Connection
from rxvoice.errors import ConnectionClosed, DaveRequired, ReconnectInProgress, UsageError
from rxvoice.events import AudioFrame, ConnectionState, SpeakingFlags
from rxvoice.protocol.gateway import Resumed, Speaking
from rxvoice.protocol.rtp import SILENCE_FRAME
from rxvoice.shard import GatewayShard
from rxvoice.testing.sandbox import Faults, Sandbox
from rxvoice.transport.websocket import FRAMES_LOGGER

from .conftest import Join
from .helpers import (
    Recorder,
    count,
    hear_everything,
    library_tasks,
    payloads_of,
    until_in_group,
)


async def test_two_connections_and_speakers_exchange_audio_bit_exact(
    sandbox: Sandbox, join: Join
) -> None:
    speaker = await sandbox.add_speaker(talk=False)
    alice = await join()
    bob = await join()
    got_alice = Recorder(alice.on_audio_frame)
    got_bob = Recorder(bob.on_audio_frame)
    transitions = Recorder(bob.on_dave_epoch_transition)
    await sandbox.wait_for(lambda: (d := sandbox.dave()) is not None and len(d.members) == 3)
    await transitions.wait_for(lambda ts: any(len(t.members) == 3 for t in ts))
    assert alice.dave is not None and bob.dave is not None
    assert alice.dave.ready and bob.dave.ready
    assert alice.dave.epoch == bob.dave.epoch
    assert alice.dave.privacy_code == bob.dave.privacy_code
    assert transitions.items[-1].privacy_code == bob.dave.privacy_code is not None
    assert transitions.items[-1].epoch == bob.dave.epoch

    # Alice sends; bob receives every payload bit-exact and attributed to alice.
    sent = [bytes([0xFC, i, 0xAA, 0x55]) + bytes(range(i % 50)) for i in range(60)]
    talking = asyncio.gather(alice.play_opus(sent), speaker.talk(60))
    await talking
    assert alice.user_id is not None
    await got_bob.wait_for(lambda fs: len(payloads_of(fs, alice.user_id)) >= 65)  # + 5 silence
    received = [f for f in got_bob.items if f.user_id == alice.user_id]
    assert [f.opus for f in received] == [*sent, *[SILENCE_FRAME] * 5]
    assert all(f.ssrc == alice.ssrc for f in received)
    # The speaker's frames reach both, bit-exact, in order.
    expected = {f.sequence: f.opus for f in speaker.sent}
    for rec in (got_alice, got_bob):
        await rec.wait_for(lambda fs: len(payloads_of(fs, speaker.user_id)) >= len(expected))
        assert payloads_of(rec.items, speaker.user_id) == expected
    assert bob.stats.dave_failures == 0
    # Every non-silence frame went through DAVE both ways (a plain frame would
    # also be accepted for a while after the group formed: count, not content).
    assert alice.dave.stats.encrypted == len(sent)
    spoken = [f for f in speaker.sent if f.opus != SILENCE_FRAME]
    assert bob.dave.stats.decrypted == len(sent) + len(spoken)


async def test_raw_frames_are_plain_and_as_received_audio_frames_in_order(
    sandbox: Sandbox, join: Join
) -> None:
    speaker = await sandbox.add_speaker(talk=False)
    conn = await join(jitter_latency=0.2)  # reordering by 45 ms never counts as a loss
    raw = Recorder(conn.on_raw_audio_frame)
    ordered = Recorder(conn.on_audio_frame)
    await until_in_group(conn, speaker.user_id)
    talking = asyncio.ensure_future(speaker.talk(100))
    # The network reorders and duplicates from the second frame on: a sender's
    # very first DAVE frame cannot be opened after a later one (davey's replay
    # window starts at the first nonce it sees).
    await raw.wait_for(count(1))
    sandbox.set_faults(Faults(reorder=0.3, reorder_delay=0.045, duplicate=0.1, seed=3))
    await talking
    expected = await hear_everything(ordered, speaker)
    mine = [f for f in raw.items if f.user_id == speaker.user_id]
    # Both layers removed: a 12-byte RTP header, then the very Opus the speaker sent.
    assert all(len(f.frame) == 12 + len(expected[f.sequence]) for f in mine)
    assert all(f.frame[12:] == f.opus == expected[f.sequence] for f in mine)
    assert all(f.frame[0] >> 6 == 2 and f.frame[8:12] == f.ssrc.to_bytes(4, "big") for f in mine)
    # Raw frames come as the network delivered them; on_audio_frame in order, once each.
    raw_order = [f.sequence for f in mine]
    assert raw_order != sorted(raw_order)
    in_order = [f.sequence for f in ordered.items if f.user_id == speaker.user_id]
    assert in_order == sorted(expected)
    assert sandbox.counters["reordered"] > 0 and sandbox.counters["duplicated"] > 0


@pytest.mark.sandbox(heartbeat_interval=60.0)
async def test_connected_then_heartbeats_acknowledge_what_was_received(
    sandbox: Sandbox, join: Join
) -> None:
    conn = await join(connect=False)
    connected = Recorder(conn.on_connected)
    beats = Recorder(conn.on_heartbeat)
    await conn.connect()
    assert connected.items == [None]  # once, after Ready
    # Two heartbeats sent after the session was ready acknowledge its messages.
    await beats.wait_for(count(len(beats.items) + 2))
    assert all(0 < rtt < 1.0 for rtt in beats.items)  # seconds, on loopback
    [me] = [p for p in sandbox.participants() if p.user_id == conn.user_id]
    assert me.seq_acked >= 2  # at least Ready and the Session Description


@pytest.mark.sandbox(require_dave=True)
async def test_dave_required_is_final_with_a_clear_error(join: Join) -> None:
    with pytest.raises(DaveRequired, match="DAVE"):
        await join(max_dave_protocol_version=0)


@pytest.mark.sandbox(dave=False)
async def test_transport_only_call_works(sandbox: Sandbox, join: Join) -> None:
    speaker = await sandbox.add_speaker(talk=False)
    conn = await join()
    assert conn.dave is not None and conn.dave.protocol_version == 0
    frames = Recorder(conn.on_audio_frame)
    await speaker.talk(30)
    await frames.wait_for(lambda fs: len(payloads_of(fs, speaker.user_id)) >= 30)
    assert payloads_of(frames.items, speaker.user_id) == {f.sequence: f.opus for f in speaker.sent}


@pytest.mark.sandbox(modes=["aead_xchacha20_poly1305_rtpsize"])
async def test_xchacha_fallback(sandbox: Sandbox, join: Join) -> None:
    speaker = await sandbox.add_speaker(talk=False)
    conn = await join()
    assert conn.rtp is not None and conn.rtp.mode.value == "aead_xchacha20_poly1305_rtpsize"
    frames = Recorder(conn.on_audio_frame)
    await speaker.talk(20)
    await frames.wait_for(lambda fs: len(payloads_of(fs, speaker.user_id)) >= 20)


async def test_a_raising_subscriber_breaks_nothing(sandbox: Sandbox, join: Join) -> None:
    speaker = await sandbox.add_speaker(talk=False)
    conn = await join()

    def explode(_: AudioFrame) -> None:
        raise RuntimeError("user bug")

    conn.on_audio_frame.subscribe(explode)
    frames = Recorder(conn.on_audio_frame)
    await speaker.talk(20)
    await frames.wait_for(lambda fs: len(payloads_of(fs, speaker.user_id)) >= 20)


async def test_speaking_events_and_roster(sandbox: Sandbox, join: Join) -> None:
    conn = await join()
    joined = Recorder(conn.on_client_connect)
    speaking = Recorder(conn.on_speaking)
    speaker = await sandbox.add_speaker(talk=False)
    await joined.wait_for(lambda cs: any(c.user_id == speaker.user_id for c in cs))
    await speaker.talk(3)
    await speaking.wait_for(count(1))
    event = speaking.items[0]
    assert (event.user_id, event.ssrc) == (speaker.user_id, speaker.ssrc)
    assert event.flags & SpeakingFlags.MICROPHONE


async def test_speaking_flags_and_raw_messages_reach_the_call(sandbox: Sandbox, join: Join) -> None:
    alice = await join()
    bob = await join()
    heard = Recorder(bob.on_speaking)

    def alice_speaking() -> int:
        return next(p.speaking for p in sandbox.participants() if p.user_id == alice.user_id)

    await alice.set_speaking(SpeakingFlags.SOUNDSHARE | SpeakingFlags.PRIORITY)
    await heard.wait_for(lambda es: any(e.user_id == alice.user_id for e in es))
    assert heard.items[-1].flags == SpeakingFlags.SOUNDSHARE | SpeakingFlags.PRIORITY == 6
    assert alice_speaking() == 6
    # send(): a raw text frame and a message dataclass go out as given.
    await alice.send(f'{{"op":5,"d":{{"speaking":1,"delay":0,"ssrc":{alice.ssrc}}}}}')
    await sandbox.wait_for(lambda: alice_speaking() == 1)
    await alice.send(Speaking(speaking=4, delay=0, ssrc=alice.ssrc))
    await sandbox.wait_for(lambda: alice_speaking() == 4)


async def test_concurrent_reconnect_is_rejected(join: Join) -> None:
    conn = await join()
    first = asyncio.ensure_future(conn.reconnect())
    await asyncio.sleep(0)  # let the first one start
    with pytest.raises(ReconnectInProgress):
        await conn.reconnect()
    await first
    assert conn.current_state is ConnectionState.READY


async def test_force_close_releases_every_task_and_socket(sandbox: Sandbox, join: Join) -> None:
    speaker = await sandbox.add_speaker(talk=False)
    conn = await join()
    frames = Recorder(conn.on_audio_frame)
    sending = asyncio.ensure_future(conn.play_opus([b"\xfc\x01\x02"] * 500))  # 10 s of audio
    await speaker.talk(5)
    await frames.wait_for(count(5))
    udp_socket = conn.udp._sock
    ws = conn.web_socket._ws
    assert isinstance(udp_socket, socket.socket) and ws is not None
    ws_socket = ws.transport.get_extra_info("socket")
    assert library_tasks()  # the runner, heartbeats, the receive loop...

    conn.force_close(4321)
    await asyncio.sleep(0)  # one loop turn for cancellations and aborts to land
    assert library_tasks() - {sending} == set()  # play_opus is the caller's own task
    assert udp_socket.fileno() == -1
    assert conn.current_state is ConnectionState.CLOSED
    assert conn.rtp is None and conn.dave is None and not conn.jitters
    with pytest.raises((ConnectionClosed, UsageError, asyncio.CancelledError)):
        await sending  # playback ends with the connection
    # The close frame (written without waiting for the reply) reached the server;
    # once written, the socket closes.
    await sandbox.wait_for(lambda: sandbox.counters.get("client_closed_4321", 0) == 1)
    assert ws_socket.fileno() == -1
    conn.force_close()  # idempotent
    gc.collect()


async def test_connect_after_force_close_starts_a_new_session(join: Join) -> None:
    conn = await join()
    first_ssrc = conn.ssrc
    conn.force_close()
    assert conn.ssrc is None
    await conn.connect()
    assert conn.current_state is ConnectionState.READY
    assert conn.ssrc is not None and conn.ssrc != first_ssrc


async def test_connect_without_credentials_or_shard_is_a_usage_error() -> None:
    conn = Connection(guild_id="1", channel_id="2", user_id="3")
    with pytest.raises(UsageError, match="shard"):
        await conn.connect()
    assert conn.current_state is ConnectionState.CLOSED


async def test_connection_refused_is_final_after_the_retries(sandbox: Sandbox) -> None:
    # Credentials pointing at a closed port: every attempt fails, then it gives up.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    conn = Connection(
        guild_id=sandbox.guild_id,
        channel_id=sandbox.channel_id,
        user_id="42",
        session_id="s",
        token="t",
        endpoint=f"127.0.0.1:{port}",
        ssl=sandbox.client_ssl(),
        max_reconnect_attempts=2,
    )
    closes = Recorder(conn.on_disconnected)
    with pytest.raises(ConnectionClosed):
        await conn.connect()
    assert [c.will_reconnect for c in closes.items] == [True, True, False]
    assert "token" not in repr(conn) and "'t'" not in repr(conn)


async def test_packets_ahead_of_the_speaking_event_are_held_then_attributed(
    sandbox: Sandbox, join: Join
) -> None:
    conn = await join()
    speaker = await sandbox.add_speaker(talk=False)
    frames = Recorder(conn.on_audio_frame)
    speaking = Recorder(conn.on_speaking)
    await Recorder(conn.on_dave_epoch_transition).wait_for(count(1))
    # The speaker's op 5 reaches us 300 ms after its audio starts.
    sandbox.set_faults(speaking_delay=0.3)
    await speaker.talk(30)
    await frames.wait_for(lambda fs: len(payloads_of(fs, speaker.user_id)) >= 30)
    assert speaking.items  # the mapping came late...
    assert conn.ssrcs.stats.held >= 10  # ...so the first packets waited for it
    assert all(f.user_id == speaker.user_id for f in frames.items)
    assert payloads_of(frames.items, speaker.user_id) == {f.sequence: f.opus for f in speaker.sent}
    assert conn.stats.dave_failures == 0 and conn.stats.unmapped_expired == 0


async def test_a_user_keeps_one_identity_when_their_ssrc_changes(
    sandbox: Sandbox, join: Join
) -> None:
    conn = await join()
    speaker = await sandbox.add_speaker(talk=False)
    frames = Recorder(conn.on_audio_frame)
    await speaker.talk(5)
    await frames.wait_for(count(5))
    old_ssrc = speaker.ssrc
    # The speaker's client reconnects: a new session (new SSRC), same user.
    again = await sandbox.add_speaker(talk=False, user_id=speaker.user_id)
    assert again.ssrc != old_ssrc
    await again.talk(5)
    await frames.wait_for(count(10))
    assert {f.user_id for f in frames.items} == {speaker.user_id}
    assert {f.ssrc for f in frames.items} == {old_ssrc, again.ssrc}


async def test_moved_to_another_channel_reconnects_there(sandbox: Sandbox, join: Join) -> None:
    conn = await join()
    assert conn.user_id is not None
    readies = Recorder(conn.on_ready)
    closes = Recorder(conn.on_disconnected)
    other = "1234567890123456789"
    assert sandbox.move(conn.user_id, other)
    await readies.wait_for(count(1))
    assert closes.items[-1].will_reconnect
    assert conn.channel_id == other
    assert conn.dave is not None and conn.dave.channel_id == other
    await sandbox.wait_for(lambda: sandbox.roster(other) == [conn.user_id])
    assert conn.user_id not in sandbox.roster()


async def test_leaving_from_the_main_gateway_closes(sandbox: Sandbox, join: Join) -> None:
    conn = await join()
    assert conn.user_id is not None
    states = Recorder(conn.state)
    sandbox.leave(conn.user_id)
    await states.wait_for(lambda ss: ss[-1] is ConnectionState.CLOSED)


async def test_disconnect_leaves_the_channel(sandbox: Sandbox, join: Join) -> None:
    conn = await join()
    assert conn.user_id is not None
    await conn.disconnect()
    await sandbox.wait_for(lambda: conn.user_id not in sandbox.roster())


async def test_no_secret_reaches_the_logs_even_the_frames_logger_at_debug(
    sandbox: Sandbox, join: Join, caplog: pytest.LogCaptureFixture
) -> None:
    # Everything at DEBUG, the opt-in frames logger included (before any socket
    # opens: websockets decides per connection whether it logs frames).
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger=FRAMES_LOGGER.name)
    speaker = await sandbox.add_speaker(talk=False)
    conn = await join(connect=False)
    raw = Recorder(conn.on_raw_message)
    frames = Recorder(conn.on_audio_frame)
    await conn.connect()
    assert conn.user_id is not None and conn.token is not None and conn.rtp is not None
    keys = [conn.rtp.cipher._key]
    # A whole session: audio, a voice resume (op 7), a main-gateway resume
    # (op 6), a new voice session (new token and key).
    await speaker.talk(10)
    await frames.wait_for(count(10))
    sandbox.force_close(conn.user_id, 4015)
    await raw.wait_for(lambda ms: any(isinstance(m, Resumed) for m in ms))
    shard = conn.shard
    assert isinstance(shard, GatewayShard)
    resumes = shard.stats.resumes
    assert sandbox.main_gateway.drop(conn.user_id)
    await sandbox.wait_for(lambda: shard.stats.resumes > resumes and shard.is_online)
    first_token = conn.token.reveal()
    readies = Recorder(conn.on_ready)
    sandbox.force_close(conn.user_id, 4006)
    await readies.wait_for(count(1))
    assert conn.rtp is not None and conn.token is not None
    keys.append(conn.rtp.cipher._key)
    tokens = [first_token, conn.token.reveal(), sandbox.bot_token, sandbox.voice_token]
    # Not even a part: websockets shows a frame's first and last characters.
    pieces = {token[i : i + 8] for token in tokens for i in range(len(token) - 7)}
    pieces |= {shown for key in keys for i in range(29) for shown in _renderings(key[i : i + 4])}

    # The sandbox plays Discord: its server-side logs are Discord's, not ours.
    ours = [
        r.getMessage()
        for r in caplog.records
        if not r.name.startswith(("websockets", "rxvoice.testing"))
    ]
    frame_lines = [r.getMessage() for r in caplog.records if r.name == FRAMES_LOGGER.name]
    assert any('"op": 2' in line for line in frame_lines)  # the main gateway's Identify...
    assert any('"op":0' in line for line in frame_lines)  # ...and the voice one were logged
    assert any("<redacted>" in line for line in frame_lines)  # (the elided middle hides most)
    shown = "\n".join(ours) + repr(conn) + "".join(repr(m) for m in raw.items) + repr(conn.rtp)
    leaked = [piece for piece in pieces if piece in shown]
    assert not leaked, f"{len(leaked)} pieces of secrets in the logs"


def _renderings(data: bytes) -> list[str]:
    """How key bytes could show: hex, a JSON array (compact or not), a bytes repr."""
    numbers = [str(b) for b in data]
    return [data.hex(), ",".join(numbers), ", ".join(numbers), repr(data)[2:-1]]


async def test_force_close_from_a_signal_handler(join: Join) -> None:
    conn = await join()
    states = Recorder(conn.state)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, conn.force_close)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        await states.wait_for(lambda ss: ss[-1] is ConnectionState.CLOSED)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert not conn.udp.is_open and not conn.web_socket.is_open


async def test_force_close_from_a_real_signal_handler(join: Join) -> None:
    # signal.signal handlers run between two bytecodes of the main thread,
    # possibly inside the event loop's own code: nothing may await or block.
    conn = await join()
    previous = signal.signal(signal.SIGUSR2, lambda *_: conn.force_close())
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert conn.current_state is ConnectionState.CLOSED  # already, synchronously
    finally:
        signal.signal(signal.SIGUSR2, previous)
    await asyncio.sleep(0)
    assert library_tasks() == set()
    assert not conn.udp.is_open and not conn.web_socket.is_open


async def test_after_a_new_session_drops_resume_and_final_codes_stay_final(
    sandbox: Sandbox, join: Join
) -> None:
    conn = await join(move_timeout=0.2)
    assert conn.user_id is not None
    readies = Recorder(conn.on_ready)
    raw = Recorder(conn.on_raw_message)
    closes = Recorder(conn.on_disconnected)
    sandbox.force_close(conn.user_id, 4006)  # new session, credentials from the shard
    await readies.wait_for(count(1))
    sandbox.force_close(conn.user_id, None)  # a drop: must resume, not start over
    await raw.wait_for(lambda ms: any(isinstance(m, Resumed) for m in ms))
    assert len(readies.items) == 1
    sandbox.force_close(conn.user_id, 4022)  # call terminated: must end
    await closes.wait_for(lambda cs: cs[-1].code == 4022)
    assert not closes.items[-1].will_reconnect
    await Recorder(conn.state).wait_for(lambda ss: ss[-1] is ConnectionState.CLOSED)


async def test_reconnect_while_connecting(join: Join) -> None:
    conn = await join(connect=False)
    connecting = asyncio.ensure_future(conn.connect())
    await Recorder(conn.state).wait_for(lambda ss: ss[-1] is ConnectionState.IDENTIFYING)
    await conn.reconnect()
    await connecting
    assert conn.current_state is ConnectionState.READY


@pytest.mark.parametrize("when", [ConnectionState.DISCOVERING, ConnectionState.SELECTING_PROTOCOL])
async def test_force_close_from_a_subscriber_in_the_handshake(
    join: Join, when: ConnectionState
) -> None:
    conn = await join(connect=False)
    conn.state.subscribe(lambda s: conn.force_close() if s is when else None)
    with pytest.raises(ConnectionClosed):
        await conn.connect()
    await asyncio.sleep(0)  # one turn for the cancelled runner to unwind
    assert conn.current_state is ConnectionState.CLOSED
    assert not conn.udp.is_open and not conn.web_socket.is_open
    mine = ("rxvoice-connection", "rxvoice-heartbeat")  # the shard lives on, by design
    assert not [t for t in asyncio.all_tasks() if t.get_name() in mine and not t.done()]


async def test_force_close_from_on_disconnected_does_not_recurse(
    sandbox: Sandbox, join: Join
) -> None:
    conn = await join()
    assert conn.user_id is not None
    seen = Recorder(conn.on_disconnected)
    conn.on_disconnected.subscribe(lambda _: conn.force_close())
    sandbox.force_close(conn.user_id, 4006)
    await Recorder(conn.state).wait_for(lambda ss: ss[-1] is ConnectionState.CLOSED)
    # The 4006, then our own close: once, not re-entered from its own event.
    assert [(d.code, d.will_reconnect) for d in seen.items] == [(4006, True), (None, False)]


@pytest.mark.sandbox(heartbeat_interval=60.0)
async def test_one_heartbeat_task_after_a_resume_and_none_after_close(
    sandbox: Sandbox, join: Join
) -> None:
    conn = await join(max_missed_heartbeats=2)
    raw = Recorder(conn.on_raw_message)
    sandbox.set_faults(drop_heartbeat_acks=1.0)
    await Recorder(conn.on_disconnected).wait_for(count(1))
    sandbox.set_faults(drop_heartbeat_acks=0.0)
    await raw.wait_for(lambda ms: any(isinstance(m, Resumed) for m in ms))
    await Recorder(conn.on_heartbeat).wait_for(count(1))

    def beating() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "rxvoice-heartbeat"]

    await asyncio.sleep(0)
    assert len([t for t in beating() if not t.done()]) == 1
    conn.force_close()
    await asyncio.sleep(0)
    assert not [t for t in beating() if not t.done()]


async def test_credentials_are_not_reused_after_a_leave(sandbox: Sandbox, join: Join) -> None:
    conn = await join()
    assert conn.user_id is not None
    sandbox.leave(conn.user_id)  # the old voice token is dead now
    await Recorder(conn.state).wait_for(lambda ss: ss[-1] is ConnectionState.CLOSED)
    closes = Recorder(conn.on_disconnected)
    await conn.connect()  # asks the shard again instead of identifying with the old token
    assert conn.current_state is ConnectionState.READY
    assert all(c.code != 4004 for c in closes.items)


async def test_close_returns_once_every_task_it_cancelled_has_ended(
    sandbox: Sandbox, join: Join
) -> None:
    speaker = await sandbox.add_speaker(talk=False)
    conn = await join()
    frames = Recorder(conn.on_audio_frame)
    await speaker.talk(3)
    await frames.wait_for(count(3))
    running = library_tasks()
    assert running  # the run, the heartbeat...
    await conn.close()
    assert all(task.done() for task in running)  # no loop turn needed after close()
    assert library_tasks() == set()
    assert frames.completed


async def test_connect_after_close_is_a_usage_error(join: Join) -> None:
    conn = await join()
    await conn.close()
    with pytest.raises(UsageError, match="close"):
        await conn.connect()


async def test_cancelled_playback_still_ends_the_talk_spurt(sandbox: Sandbox, join: Join) -> None:
    alice = await join()
    bob = await join()
    speaking = Recorder(bob.on_speaking)
    frames = Recorder(bob.on_audio_frame)
    assert alice.user_id is not None

    async def forever() -> AsyncIterator[bytes]:
        while True:
            yield b"\xfc\x01\x02\x03"

    playing = asyncio.ensure_future(alice.play_opus(forever()))
    await frames.wait_for(lambda fs: len(payloads_of(fs, alice.user_id)) >= 5)
    playing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await playing
    await speaking.wait_for(
        lambda es: any(e.user_id == alice.user_id and e.flags == SpeakingFlags.NONE for e in es)
    )
    await frames.wait_for(
        lambda fs: (
            payloads_of(fs, alice.user_id).get(max(payloads_of(fs, alice.user_id))) == SILENCE_FRAME
        )
    )


async def test_playback_pauses_through_a_new_session_and_goes_on(
    sandbox: Sandbox, join: Join
) -> None:
    alice = await join()
    bob = await join()
    assert alice.user_id is not None
    heard = Recorder(bob.on_audio_frame)
    readies = Recorder(alice.on_ready)
    sent = [bytes([0xFC, i % 256, i // 256, 0x55]) for i in range(100)]
    playing = asyncio.ensure_future(alice.play_opus(sent, stop=False))
    await heard.wait_for(lambda fs: len(payloads_of(fs, alice.user_id)) >= 10)
    first_ssrc = alice.ssrc
    sandbox.force_close(alice.user_id, 4006)  # a new session: new SSRC, keys, DAVE group
    assert await playing == len(sent)  # not a UsageError: it paused, then went on
    assert readies.items == [None] and alice.ssrc != first_ssrc
    assert alice.stats.frames_sent == len(sent) and alice.stats.frames_dropped == 0
    await heard.wait_for(lambda fs: any(f.ssrc == alice.ssrc for f in fs))
    # Bob heard both sessions; what he got is bit-exact, in the order it was played.
    mine = [f for f in heard.items if f.user_id == alice.user_id]
    assert {f.ssrc for f in mine} == {first_ssrc, alice.ssrc}
    order = [sent.index(f.opus) for f in mine]
    assert order == sorted(order)
    await heard.wait_for(lambda fs: fs[-1].opus == sent[-1])


async def test_send_opus_drops_while_the_connection_comes_back_and_raises_once_closed(
    sandbox: Sandbox, join: Join
) -> None:
    conn = await join(move_timeout=0.2)
    assert conn.user_id is not None
    states = Recorder(conn.state)
    sandbox.force_close(conn.user_id, 4006)
    await states.wait_for(lambda ss: ConnectionState.RECONNECTING in ss)
    await conn.send_opus(b"\xfc\x01\x02")  # coming back: dropped, counted
    assert conn.stats.frames_dropped == 1 and conn.stats.frames_sent == 0
    await Recorder(conn.on_ready).wait_for(count(1))
    sandbox.force_close(conn.user_id, 4022)  # call terminated: closed for good
    await states.wait_for(lambda ss: ss[-1] is ConnectionState.CLOSED)
    with pytest.raises(ConnectionClosed) as closed:
        await conn.send_opus(b"\xfc\x01\x02")
    assert closed.value.code == 4022
    with pytest.raises(ConnectionClosed):
        await conn.play_opus([b"\xfc\x01\x02"])
