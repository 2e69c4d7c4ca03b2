"""The fault matrix: every fault issue 12 tried against a running Connection, with counts.

Each case runs a real Connection against the sandbox, breaks one thing, and
counts: the frames a simulated speaker sent against the frames ``on_audio_frame``
emitted for it, the connection's counters and state, and, after ``force_close``,
its tasks and sockets. Nothing sleeps: every wait is for an event or a count.

- Network faults (loss 1/5/20 %, reordering, duplication, 40 ms jitter): every
  frame that arrived is emitted once and in order; the only frames missing are
  the ones the network lost.
- Gateway and session faults (4015, drops, missed heartbeat ACKs, 4006, 4009,
  4004, 4011, a move, ``endpoint: null``, op 31, a DAVE downgrade and upgrade,
  epoch churn, repeated and malformed messages): a resume or a DAVE event loses
  nothing, a new session loses only what was sent while the bot was out of the
  call (the sandbox relays to a session only while it exists).
- Silence: keepalives and heartbeats go on, and audio after it arrives.
- Final close codes: the connection ends and releases everything by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from rxvoice.connection import Connection
from rxvoice.events import AudioFrame, ConnectionState, DiagnosticKind, Disconnected
from rxvoice.protocol import gateway as gw
from rxvoice.testing.sandbox import Faults, Sandbox
from rxvoice.testing.sandbox.speakers import Speaker

from .conftest import Join
from .helpers import (
    Recorder,
    Sockets,
    count,
    force_close_releases_everything,
    library_tasks,
    payloads_of,
    talk_until,
    until_in_group,
)

# -- network faults ----------------------------------------------------------------------

NETWORK = {
    "loss 1 %": Faults(loss=0.01, seed=1),
    "loss 5 %": Faults(loss=0.05, seed=2),
    "loss 20 %": Faults(loss=0.20, seed=3),
    "reordering 30 % by 45 ms": Faults(reorder=0.3, reorder_delay=0.045, seed=4),
    "duplication 20 %": Faults(duplicate=0.2, seed=5),
    "jitter 40 ms": Faults(jitter=0.04, seed=6),
}
FRAMES = 40


def in_order_once(frames: list[AudioFrame], speaker: Speaker) -> dict[int, bytes]:
    """The speaker's frames as emitted: asserted once each, in order, bit-exact."""
    mine = [f for f in frames if f.user_id == speaker.user_id]
    sequences = [f.sequence for f in mine]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    sent = {f.sequence: f.opus for f in speaker.sent}
    assert all(f.opus == sent[f.sequence] for f in mine)
    return {f.sequence: f.opus for f in mine}


@pytest.mark.sandbox(rtcp_interval=0)  # every datagram the injector sees is the speaker's audio
@pytest.mark.parametrize("fault", NETWORK)
async def test_network_faults_emit_every_frame_that_arrived_once_and_in_order(
    sandbox: Sandbox, join: Join, fault: str
) -> None:
    speaker = await sandbox.add_speaker(talk=False)
    conn = await join(jitter_latency=0.2)  # reordering by 45 ms is never counted as a loss
    sockets = Sockets(conn)
    frames = Recorder(conn.on_audio_frame)
    await until_in_group(conn, speaker.user_id)
    # The first frame goes through clean: davey cannot open a sender's first
    # DAVE frame after a later one (its window starts at the first nonce it sees).
    await speaker.talk(1)
    await frames.wait_for(count(1))
    sandbox.set_faults(NETWORK[fault])
    await speaker.talk(FRAMES)
    lost = sandbox.counters.get("lost", 0)
    arrived = len(speaker.sent) - lost  # the one recipient: every loss is ours
    await frames.wait_for(lambda fs: len(payloads_of(fs, speaker.user_id)) >= arrived)
    sandbox.set_faults(Faults())
    await speaker.talk(1)  # anything still held would come out before this one
    await frames.wait_for(lambda fs: fs[-1].sequence == speaker.sent[-1].sequence)
    assert len(in_order_once(frames.items, speaker)) == arrived + 1
    assert NETWORK[fault].loss == 0 or lost > 0  # the knob did something
    assert conn.stats.undecryptable_packets == 0
    # A network duplicate is caught by the replay window before DAVE: it is
    # counted as a replay, never as a DAVE failure (issue 12, defect 3).
    assert conn.stats.dave_failures == 0
    assert (conn.stats.replayed_packets > 0) == (NETWORK[fault].duplicate > 0)
    assert conn.current_state is ConnectionState.READY
    await force_close_releases_everything(conn, sockets)


async def test_corrupt_truncated_and_junk_datagrams_are_counted_and_the_stream_survives(
    sandbox: Sandbox, join: Join
) -> None:
    speaker = await sandbox.add_speaker(talk=False)
    conn = await join()
    sockets = Sockets(conn)
    frames = Recorder(conn.on_audio_frame)
    diagnostics = Recorder(conn.on_diagnostic)
    await until_in_group(conn, speaker.user_id)
    sandbox.set_faults(corrupt=0.2, truncate=0.1, garbage=0.2, seed=3)
    await speaker.talk(FRAMES)
    sandbox.set_faults(corrupt=0.0, truncate=0.0, garbage=0.0)
    await speaker.talk(10)
    await frames.wait_for(lambda fs: speaker.sent[-1].sequence in payloads_of(fs, speaker.user_id))
    received = in_order_once(frames.items, speaker)
    broken = sandbox.counters.get("corrupted", 0) + sandbox.counters.get("truncated", 0)
    assert len(received) == len(speaker.sent) - broken > 0  # every intact frame, no broken one
    assert conn.stats.undecryptable_packets + conn.stats.malformed_packets > 0 and diagnostics.items
    assert conn.current_state is ConnectionState.READY
    await force_close_releases_everything(conn, sockets)


# -- gateway and session faults ------------------------------------------------------------


@dataclass
class Call:
    """One case's world: the sandbox, the bot's connection, a speaker talking throughout."""

    sandbox: Sandbox
    conn: Connection
    talker: Speaker
    user_id: str
    frames: Recorder[AudioFrame]
    raw: Recorder[gw.GatewayMessage]
    closes: Recorder[Disconnected]
    readies: Recorder[None]
    notes: dict[str, Any] = field(default_factory=dict)

    async def resumed(self) -> None:
        await self.raw.wait_for(lambda ms: any(isinstance(m, gw.Resumed) for m in ms))

    async def new_session(self) -> None:
        await self.readies.wait_for(count(1))


Inject = Callable[[Call], Awaitable[None]]

# What a case may lose: nothing, or only frames sent while the bot was out of
# the call (a new session), or frames around a DAVE event, each one counted.
NOTHING, OUTAGE, COUNTED = "nothing", "outage", "counted"
SLACK = 5  # frames in flight around the outage's edges (sent before the close was seen)
HANDFUL = 5


@dataclass(frozen=True)
class Case:
    name: str
    inject: Inject
    loses: str = NOTHING
    resumes: int = 0
    reconnects: int = 0
    sandbox: dict[str, Any] = field(default_factory=dict)
    connection: dict[str, Any] = field(default_factory=dict)


async def close_and_resume(call: Call, code: int | None) -> None:
    assert call.sandbox.force_close(call.user_id, code)
    await call.resumed()
    assert call.closes.items[0].code == code and call.closes.items[0].will_reconnect


async def resume_after_4015_with_what_was_missed(call: Call) -> None:
    # While the WebSocket is down, someone leaves: the server buffers op 13,
    # and the resume replays it.
    leaver = await call.sandbox.add_speaker(talk=False)
    left = Recorder(call.conn.on_client_disconnect)
    leave = call.conn.on_disconnected.subscribe(lambda _: call.sandbox.leave(leaver.user_id))
    await close_and_resume(call, 4015)
    leave.dispose()
    await left.wait_for(lambda ls: any(x.user_id == leaver.user_id for x in ls))


async def missed_heartbeat_acks(call: Call) -> None:
    call.sandbox.set_faults(drop_heartbeat_acks=1.0)
    await call.closes.wait_for(count(1))
    assert "heartbeat" in call.closes.items[0].reason and call.closes.items[0].will_reconnect
    call.sandbox.set_faults(drop_heartbeat_acks=0.0)
    await call.resumed()
    await Recorder(call.conn.on_heartbeat).wait_for(count(1))


def new_session_after(code: int) -> Inject:
    async def inject(call: Call) -> None:
        first_ssrc = call.conn.ssrc
        assert call.sandbox.force_close(call.user_id, code)
        await call.new_session()
        assert call.closes.items[0].code == code and call.closes.items[0].will_reconnect
        assert call.conn.ssrc != first_ssrc  # a new SSRC, key and DAVE group

    return inject


async def moved_within_the_call(call: Call) -> None:
    assert call.sandbox.move(call.user_id)  # a new voice token; the old session gets 4014
    await call.new_session()


async def endpoint_null_then_a_new_server(call: Call) -> None:
    states = Recorder(call.conn.state)
    assert call.sandbox.endpoint_null(call.user_id)
    await states.wait_for(lambda ss: ss[-1] is ConnectionState.RECONNECTING)
    assert not call.conn.web_socket.is_open
    assert call.sandbox.server_update(call.user_id)
    await call.new_session()


async def invalid_commit_op31(call: Call) -> None:
    conn = call.conn
    assert call.sandbox.inject_invalid_commit(call.user_id)
    joiner = await call.sandbox.add_speaker(talk=False)  # its commit reaches us corrupted
    await call.sandbox.wait_for(lambda: conn.dave is not None and conn.dave.stats.recoveries == 1)
    await until_in_group(conn, joiner.user_id)  # op 31, a new key package, welcomed again


async def downgrade_then_upgrade(call: Call) -> None:
    epochs = Recorder(call.conn.on_dave_epoch_transition)
    plain = await call.sandbox.add_speaker(talk=False, dave=False)
    await epochs.wait_for(lambda ts: bool(ts) and ts[-1].protocol_version == 0)
    await plain.talk(5)
    await call.frames.wait_for(lambda fs: len(payloads_of(fs, plain.user_id)) == 5)
    await call.sandbox.remove_speaker(plain)
    await epochs.wait_for(lambda ts: bool(ts) and ts[-1].protocol_version == 1)
    dave = call.conn.dave
    assert dave is not None
    decrypted = dave.stats.decrypted
    await call.sandbox.wait_for(lambda: dave.stats.decrypted >= decrypted + 5)  # E2EE again


async def epoch_churn(call: Call) -> None:
    service = call.sandbox.dave()
    assert service is not None
    start = service.epoch
    await call.sandbox.churn(cycles=3)  # three joins and three leaves: six epochs
    await call.sandbox.wait_for(
        lambda: call.conn.dave is not None and call.conn.dave.epoch == service.epoch
    )
    assert service.epoch - start >= 6


async def repeated_ready_and_session_description(call: Call) -> None:
    conn = call.conn
    assert conn.rtp is not None
    ready = gw.Ready(ssrc=conn.rtp.ssrc + 1, ip="127.0.0.1", port=9, modes=("xsalsa20_poly1305",))
    again = gw.SessionDescription("aead_aes256_gcm_rtpsize", bytes(32), dave_protocol_version=1)
    diagnostics = Recorder(conn.on_diagnostic)
    for message in (ready, again, again):
        assert call.sandbox.send_raw(call.user_id, gw.serialize(message))
    await diagnostics.wait_for(
        lambda ds: sum(d.kind is DiagnosticKind.UNEXPECTED_MESSAGE for d in ds) == 3
    )
    assert conn.stats.unexpected_messages == 3
    assert conn.ssrc == conn.rtp.ssrc  # what we announce is what we send with
    assert conn.dave is not None and conn.dave.stats.recoveries == 0


async def malformed_messages(call: Call) -> None:
    diagnostics = Recorder(call.conn.on_diagnostic)
    bad: list[str | bytes] = [
        "not json",
        '{"op": 5, "d": {"speaking": "loud"}}',  # a known op with a wrong field
        '{"op": 2, "d": []}',
        b"\x00",  # a truncated binary frame
        b"\x00\x07\x1e\xff",  # op 30 (welcome) with a garbage body
        '{"op": 200, "d": {}}',  # unknown op: parsed, not an error
    ]
    for frame in bad:
        assert call.sandbox.send_raw(call.user_id, frame)
    await diagnostics.wait_for(count(4))
    assert call.conn.stats.malformed_messages >= 4


CASES = [
    Case("4015 resumes, missed ones replayed", resume_after_4015_with_what_was_missed, resumes=1),
    Case("TCP drop resumes", lambda call: close_and_resume(call, None), resumes=1),
    Case(
        "missed heartbeat ACKs resume",
        missed_heartbeat_acks,
        resumes=1,
        sandbox={"heartbeat_interval": 100.0},
        connection={"max_missed_heartbeats": 2},
    ),
    Case("4006 new session", new_session_after(4006), OUTAGE, reconnects=1),
    Case("4009 new session", new_session_after(4009), OUTAGE, reconnects=1),
    Case("4004 new session", new_session_after(4004), OUTAGE, reconnects=1),
    Case("4011 new session", new_session_after(4011), OUTAGE, reconnects=1),
    Case("moved: new token, 4014", moved_within_the_call, OUTAGE, reconnects=1),
    Case("endpoint null, then a server", endpoint_null_then_a_new_server, OUTAGE, reconnects=1),
    Case("invalid commit: op 31", invalid_commit_op31, COUNTED),
    Case("DAVE downgrade and upgrade", downgrade_then_upgrade, COUNTED),
    Case("epoch churn", epoch_churn),
    Case("repeated op 2 and op 4", repeated_ready_and_session_description),
    Case("malformed messages", malformed_messages),
]


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=pytest.mark.sandbox(**c.sandbox)) for c in CASES]
)
async def test_gateway_and_session_faults(sandbox: Sandbox, join: Join, case: Case) -> None:
    talker = await sandbox.add_speaker(talk=False)
    conn = await join(**case.connection)
    assert conn.user_id is not None
    sockets = Sockets(conn)
    frames = Recorder(conn.on_audio_frame)
    call = Call(
        sandbox,
        conn,
        talker,
        conn.user_id,
        frames,
        Recorder(conn.on_raw_message),
        Recorder(conn.on_disconnected),
        Recorder(conn.on_ready),
    )
    await until_in_group(conn, talker.user_id)
    stop = asyncio.Event()
    talking = asyncio.ensure_future(talk_until(talker, stop))
    await frames.wait_for(count(5))

    before = len(talker.sent)
    await case.inject(call)
    await until_in_group(conn, talker.user_id)  # back: ready, and in the talker's group
    back = len(talker.sent)
    stop.set()
    await talking
    last = talker.sent[-1].sequence
    await frames.wait_for(lambda fs: last in payloads_of(fs, talker.user_id))

    received = payloads_of(frames.items, talker.user_id)
    missing = [i for i, f in enumerate(talker.sent) if f.sequence not in received]
    assert all(received[f.sequence] == f.opus for f in talker.sent if f.sequence in received)
    if case.loses == NOTHING:
        assert missing == [] and conn.stats.dave_failures == 0
    elif case.loses == OUTAGE:
        # Only what was sent while the bot was out of the call.
        assert all(before - SLACK <= i < back + SLACK for i in missing), (before, back, missing)
    else:
        # Around a DAVE event: a handful at most, and each one counted (as a
        # real failure, or one while out of the group or in a transition).
        stats = conn.stats
        counted = (
            stats.dave_failures
            + stats.dave_failures_before_join
            + stats.dave_failures_in_transition
        )
        assert len(missing) <= HANDFUL and len(missing) <= counted
    assert conn.stats.resumes == case.resumes and conn.stats.reconnects == case.reconnects
    assert conn.current_state is ConnectionState.READY
    await force_close_releases_everything(conn, sockets)


# -- silence -------------------------------------------------------------------------------

SILENT_KEEPALIVES = 60  # five minutes of Discord's 5-second keepalive interval


@pytest.mark.sandbox(heartbeat_interval=50.0)
async def test_keepalives_and_heartbeats_flow_through_minutes_of_silence(
    sandbox: Sandbox, join: Join
) -> None:
    # Intervals shortened 500 times: 60 keepalives and 100 heartbeats of silence.
    talker = await sandbox.add_speaker(talk=False)
    conn = await join(keepalive_interval=0.01)
    frames = Recorder(conn.on_audio_frame)
    beats = Recorder(conn.on_heartbeat)
    await until_in_group(conn, talker.user_id)
    await talker.talk(5)
    await frames.wait_for(count(5))
    keepalives = sandbox.counters.get("udp_keepalives", 0)
    await sandbox.wait_for(
        lambda: sandbox.counters.get("udp_keepalives", 0) >= keepalives + SILENT_KEEPALIVES,
        timeout=30.0,
    )
    await beats.wait_for(count(12))  # the WebSocket's heartbeats too (50 ms)
    assert conn.udp.stats.keepalives_sent >= SILENT_KEEPALIVES
    await talker.talk(10)
    await frames.wait_for(count(15))
    assert payloads_of(frames.items, talker.user_id) == {f.sequence: f.opus for f in talker.sent}
    assert conn.stats.resumes == conn.stats.reconnects == 0


# -- final close codes ---------------------------------------------------------------------


@pytest.mark.parametrize("code", [4014, 4021, 4022, 4001, 4016, 4020])
async def test_final_codes_end_cleanly_and_release_everything(
    sandbox: Sandbox, join: Join, code: int
) -> None:
    # 4014 with no new voice server following (a kick, not a move) ends it too.
    conn = await join(move_timeout=0.2)
    assert conn.user_id is not None
    sockets = Sockets(conn)
    closes = Recorder(conn.on_disconnected)
    states = Recorder(conn.state)
    running = library_tasks()
    sandbox.force_close(conn.user_id, code)
    await states.wait_for(lambda ss: ss[-1] is ConnectionState.CLOSED)
    assert closes.items[-1].code == code and not closes.items[-1].will_reconnect
    await asyncio.wait(running)
    assert library_tasks() == set()
    assert await sockets.all_closed()
