"""The sandbox's voice gateway, driven by a raw client (protocol.md §7.2, §11)."""

from __future__ import annotations

import json

import pytest
import websockets

from rxvoice.errors import UsageError
from rxvoice.protocol import gateway as gw
from rxvoice.protocol.crypto import TransportCipher
from rxvoice.testing.sandbox import Sandbox
from tests.sandbox.rawclient import AES, XCHACHA, Harness, RawVoiceClient, harness


@pytest.fixture
async def h() -> Harness:
    async with harness(dave=False) as h:
        yield h


async def test_handshake_hello_ready_and_session_description(h: Harness) -> None:
    a = h.client()
    await a.connect()
    hello = await a.next(gw.Hello)
    assert hello.heartbeat_interval == 41_250 and hello.version == 8
    description = await a.handshake()
    ready = a.of(gw.Ready)[0]
    assert ready.ip == "127.0.0.1" and ready.port == h.sb.media_address[1]
    assert list(ready.modes) == [AES, XCHACHA]
    assert description.mode == AES and len(description.secret_key) == 32
    assert description.dave_protocol_version == 0
    # §11.3: JSON seq starts at 1 and counts every numbered message; op 8 carries none.
    seqs = [e.seq for e in a.messages]
    assert seqs[0] is None and seqs[1:] == [1, 2]
    b = await h.joined()
    assert b.ssrc != a.ssrc
    assert b.of(gw.SessionDescription)[0].secret_key != description.secret_key


async def test_identify_errors() -> None:
    async with harness(dave=False) as h:
        # 4003: anything but Identify/Resume/Heartbeat first.
        c = h.client()
        await c.connect()
        await c.send(gw.Speaking(speaking=1, ssrc=1, delay=0))
        assert await c.wait_closed() == 4003
        # 4004: a token that was never minted (or belongs to another user).
        c = h.client(token="nope")
        await c.connect()
        await c.send(c.identify_message())
        assert await c.wait_closed() == 4004
        other = h.sb.voice_credentials("555")
        c = h.client(token=other.token)
        await c.connect()
        await c.send(c.identify_message())
        assert await c.wait_closed() == 4004
        # 4005: a second Identify.
        c = await h.joined()
        await c.send(c.identify_message())
        assert await c.wait_closed() == 4005
        # 4001: an opcode clients never send (op 2 is server-only).
        c = await h.joined()
        await c.send_raw(json.dumps({"op": 2, "d": {}}))
        assert await c.wait_closed() == 4001
        # 4002: not JSON at all.
        c = await h.joined()
        await c.send_raw("{not json")
        assert await c.wait_closed() == 4002
        assert h.sb.counters["malformed_frames"] == 1
        assert h.sb.counters["closed_4001"] == 1


async def test_bad_mode_closes_4016(h: Harness) -> None:
    c = h.client()
    await c.connect()
    await c.send(c.identify_message())
    await c.next(gw.Ready)
    await c.send(gw.SelectProtocol(address="127.0.0.1", port=1, mode="xsalsa20_poly1305"))
    assert await c.wait_closed() == 4016


async def test_universal_token_accepts_any_user_and_session(h: Harness) -> None:
    c = h.client(token=h.sb.voice_token, session_id="whatever")
    await c.connect()
    await c.handshake()
    assert h.sb.roster() == [c.user_id]


async def test_version_query_is_required() -> None:
    async with Sandbox(dave=False) as sb:
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(f"wss://{sb.voice_endpoint}/", ssl=sb.client_ssl())


async def test_dave_required_closes_non_dave_clients_with_4017() -> None:
    async with harness(require_dave=True) as h:
        c = h.client(max_dave=0)
        await c.connect()
        await c.send(c.identify_message())
        assert await c.wait_closed() == 4017
        ok = await h.joined()
        assert ok.of(gw.SessionDescription)[0].dave_protocol_version == 1
        assert h.sb.roster() == [ok.user_id]


async def test_roster_and_speaking_relay(h: Harness) -> None:
    a = await h.joined()
    await a.speak(1)
    b = await h.joined()
    # The joiner learns who is there and who is speaking, after Ready.
    assert (await b.next(gw.ClientsConnect)).user_ids == (a.user_id,)
    speaking = await b.next(gw.Speaking)
    assert (speaking.user_id, speaking.ssrc, speaking.speaking) == (a.user_id, a.ssrc, 1)
    kinds = [type(e.message) for e in b.messages]
    assert kinds.index(gw.Ready) < kinds.index(gw.ClientsConnect)
    # The others learn about the joiner; op 5 is relayed with user_id and ssrc.
    assert (await a.next(gw.ClientsConnect)).user_ids == (b.user_id,)
    await b.speak(2)
    relayed = await a.next(gw.Speaking)
    assert (relayed.user_id, relayed.ssrc, relayed.speaking) == (b.user_id, b.ssrc, 2)
    # Leaving: op 13 to the others.
    h.sb.leave(b.user_id)
    assert await b.wait_closed() == 4014
    assert (await a.next(gw.ClientDisconnect)).user_id == b.user_id
    assert h.sb.roster() == [a.user_id]


async def test_heartbeat_ack_and_timeout() -> None:
    async with harness(dave=False, heartbeat_interval=200) as h:
        a = await h.joined()
        await a.send(gw.Heartbeat(nonce=1234, seq_ack=a.last_seq))
        acks = []
        await a.wait_until(lambda: any(m.nonce == 1234 for m in a.of(gw.HeartbeatAck)))
        acks = [e for e in a.messages if isinstance(e.message, gw.HeartbeatAck)]
        assert all(e.seq is None for e in acks)  # op 6 is not numbered
        # A client that stops heartbeating is closed with 4009 and leaves.
        silent = h.client(heartbeat=False)
        await silent.connect()
        await silent.handshake()
        assert await silent.wait_closed() == 4009
        await h.sb.wait_for(lambda: silent.user_id not in h.sb.roster())
        # The dropped-ACK fault: heartbeats go unanswered.
        h.sb.set_faults(drop_heartbeat_acks=1.0)
        before = len(a.of(gw.HeartbeatAck))
        await a.send(gw.Heartbeat(nonce=99, seq_ack=a.last_seq))
        await h.sb.wait_for(lambda: h.sb.counters.get("dropped_heartbeat_acks", 0) >= 1)
        assert all(m.nonce != 99 for m in a.of(gw.HeartbeatAck)[before:])


async def test_resume_replays_missed_messages(h: Harness) -> None:
    a = await h.joined()
    await a.send(gw.Heartbeat(nonce=1, seq_ack=a.last_seq))
    await a.next(gw.HeartbeatAck)
    acked = a.last_seq
    # 4015 (voice server crashed) is resumable: the session stays in the call.
    assert h.sb.force_close(a.user_id, 4015)
    assert await a.wait_closed() == 4015
    # Meanwhile the others act: these messages wait in a's buffer.
    b = await h.joined()
    await b.speak(1)
    await h.sb.wait_for(lambda: h.sb.counters.get("identified", 0) == 2)
    assert h.sb.roster() == [a.user_id, b.user_id]
    ssrc, key = a.ssrc, a.of(gw.SessionDescription)[0].secret_key

    r = h.client(a.user_id, session_id=a.session_id, token=a.token)
    await r.connect()
    await r.send(
        gw.Resume(server_id=h.sb.guild_id, session_id=a.session_id, token=a.token, seq_ack=acked)
    )
    await r.next(gw.Resumed)
    connect = await r.next(gw.ClientsConnect)
    speaking = await r.next(gw.Speaking)
    assert connect.user_ids == (b.user_id,) and speaking.user_id == b.user_id
    # Replayed messages keep their numbers, which follow on from acked.
    # (op 11, op 18, op 20 about b, then b's op 5.)
    numbered = [e.seq for e in r.messages if e.seq is not None]
    assert numbered == [acked + 1, acked + 2, acked + 3, acked + 4]
    assert r.of(gw.ClientFlags)[0].user_id == r.of(gw.ClientPlatform)[0].user_id == b.user_id
    assert r.of(gw.Resumed) and not r.of(gw.Ready)
    # Same SSRC and key: UDP keeps working without a new handshake.
    info = {p.user_id: p for p in h.sb.participants()}[a.user_id]
    assert info.ssrc == ssrc and info.connected
    # The resumed session keeps a's socket, SSRC and RtpCrypto (the old key, counters going on).
    assert a.rtp is not None and a.cipher is not None
    r.ssrc, r.udp, r.rtp, r.datagrams = a.ssrc, a.udp, a.rtp, a.datagrams
    r.cipher = TransportCipher(a.cipher.mode, key)
    await r.speak(1)
    assert (await b.next(gw.Speaking)).user_id == a.user_id
    r.send_opus(b"after resume")
    _, packet = await b.recv_rtp()
    assert (packet.header.ssrc, packet.payload) == (ssrc, b"after resume")
    b.send_opus(b"to the resumed client")
    _, packet = await r.recv_rtp()  # opened with the key from a's op 4
    assert (packet.header.ssrc, packet.payload) == (b.ssrc, b"to the resumed client")
    assert not r.of(gw.SessionDescription)  # no new key was handed out


async def test_resume_rejections() -> None:
    async with harness(dave=False, replay_limit=1) as h:
        a = await h.joined()
        b = await h.joined()
        await b.speak(1)
        await a.next(gw.Speaking)
        # Unknown session: 4006.
        r = h.client(a.user_id)
        await r.connect()
        await r.send(
            gw.Resume(server_id=h.sb.guild_id, session_id="gone", token=a.token, seq_ack=0)
        )
        assert await r.wait_closed() == 4006
        # Wrong token: 4004.
        r = h.client(a.user_id)
        await r.connect()
        await r.send(
            gw.Resume(server_id=h.sb.guild_id, session_id=a.session_id, token="x", seq_ack=0)
        )
        assert await r.wait_closed() == 4004
        # The buffer (1 message) no longer holds what seq_ack=0 asks for: resume_gap_code.
        r = h.client(a.user_id)
        await r.connect()
        await r.send(
            gw.Resume(server_id=h.sb.guild_id, session_id=a.session_id, token=a.token, seq_ack=0)
        )
        assert await r.wait_closed() == 4006
        await h.sb.wait_for(lambda: a.user_id not in h.sb.roster())


async def test_heartbeat_seq_ack_trims_the_replay_buffer() -> None:
    async with harness(dave=False) as h:
        acked = await h.joined()
        unacked = await h.joined()
        # Only `acked` acknowledges what it has seen; its buffer is trimmed up to there.
        await acked.send(gw.Heartbeat(nonce=1, seq_ack=acked.last_seq))
        await acked.next(gw.HeartbeatAck)
        for c in (acked, unacked):
            assert h.sb.force_close(c.user_id, 4015)
            assert await c.wait_closed() == 4015

        def resume(c: RawVoiceClient) -> gw.Resume:
            return gw.Resume(
                server_id=h.sb.guild_id, session_id=c.session_id, token=c.token, seq_ack=0
            )

        # Without an ack nothing was trimmed: seq_ack=0 replays everything from seq 1.
        r = h.client(unacked.user_id, session_id=unacked.session_id, token=unacked.token)
        await r.connect()
        await r.send(resume(unacked))
        await r.next(gw.Resumed)
        await r.wait_until(lambda: r.last_seq == unacked.last_seq)
        numbered = [e.seq for e in r.messages if e.seq is not None]
        assert numbered == list(range(1, unacked.last_seq + 1))
        # After the ack, seq_ack=0 asks for messages that are gone: refused with 4006.
        r = h.client(acked.user_id, session_id=acked.session_id, token=acked.token)
        await r.connect()
        await r.send(resume(acked))
        assert await r.wait_closed() == 4006
        assert not r.of(gw.Resumed)
        assert h.sb.counters["resume_gaps"] == 1
        await h.sb.wait_for(lambda: acked.user_id not in h.sb.roster())
        assert unacked.user_id in h.sb.roster()


@pytest.mark.parametrize("code", [4006, 4009, 4014, 4017, 4021, 4022])
async def test_forced_final_closes_end_the_session(h: Harness, code: int) -> None:
    a = await h.joined()
    b = await h.joined()
    assert h.sb.force_close(b.user_id, code)
    assert await b.wait_closed() == code
    assert (await a.next(gw.ClientDisconnect)).user_id == b.user_id


async def test_abrupt_drop_keeps_the_session_for_resume() -> None:
    async with harness(dave=False, resume_window=0.2) as h:
        a = await h.joined()
        b = await h.joined()
        assert h.sb.force_close(b.user_id, None)
        assert await b.wait_closed() is None  # no close frame: TCP dropped
        assert b.user_id in h.sb.roster()
        # Nobody resumes: after resume_window the session ends.
        assert (await a.next(gw.ClientDisconnect)).user_id == b.user_id
        assert h.sb.counters["sessions_expired"] == 1


async def test_binary_frames_carry_the_shared_seq() -> None:
    async with harness() as h:
        a = await h.joined()
        # op 25 (binary) follows op 4 and takes the next number from the same counter.
        await a.wait_until(lambda: bool(a.of(gw.DaveMlsExternalSender)))
        kinds = [(type(e.message), e.seq) for e in a.messages]
        op4 = kinds.index((gw.SessionDescription, 2))
        assert kinds[op4 + 1] == (gw.DaveMlsExternalSender, 3)


def test_seq_ack_unwrapping_and_resumable_codes() -> None:
    from rxvoice.testing.sandbox.voice import _unwrap_ack, resumable

    assert _unwrap_ack(None, 10) == 0 and _unwrap_ack(-1, 10) == 0
    assert _unwrap_ack(7, 10) == 7 and _unwrap_ack(99, 10) == 10
    # A binary frame carried seq mod 2^16: map it back onto the full counter.
    assert _unwrap_ack(5, 65_536 + 10) == 65_536 + 5
    assert _unwrap_ack(65_530, 65_536 + 10) == 65_530
    assert _unwrap_ack(70_000, 70_001) == 70_000
    assert all(resumable(c) for c in (None, 1000, 1006, 4013, 4015))
    assert not any(resumable(c) for c in (4006, 4009, 4014, 4017, 4021, 4022))


async def test_garbage_dave_input_is_counted_not_fatal() -> None:
    async with harness() as h:
        a = await h.joined(auto_dave=False)
        for frame in (
            bytes([26]) + b"\x00\x01garbage",  # not a key package
            bytes([28]) + bytes(40),  # not a commit
            bytes([28]),
            gw.serialize(gw.DaveTransitionReady(transition_id=999)),
            gw.serialize(gw.DaveMlsInvalidCommitWelcome(transition_id=7)),
            bytes([12]) + b"video?",  # ignored op
        ):
            await a.send_raw(frame)
        await a.send(gw.Heartbeat(nonce=5, seq_ack=a.last_seq))
        assert (await a.next(gw.HeartbeatAck)).nonce == 5  # still served
        service = h.sb.dave()
        assert service is not None
        assert service.stats.rejected_key_packages == 1
        assert service.stats.dropped_commits == {"malformed": 2}
        assert "handler_errors" not in h.sb.counters
        assert not a.closed.is_set()


async def test_a_session_id_cannot_serve_two_users() -> None:
    async with harness(dave=False) as h:
        first = await h.joined(token=h.sb.voice_token, session_id="shared")
        second = h.client(token=h.sb.voice_token, session_id="shared")
        await second.connect()
        await second.send(second.identify_message())
        assert await second.wait_closed() == 4004
        assert first.user_id in h.sb.roster()
        # Still held while the first user's session waits for a resume.
        assert h.sb.force_close(first.user_id, 4015)
        assert await first.wait_closed() == 4015
        third = h.client(token=h.sb.voice_token, session_id="shared")
        await third.connect()
        await third.send(third.identify_message())
        assert await third.wait_closed() == 4004
        assert h.sb.roster() == [first.user_id]


async def test_universal_token_needs_a_snowflake_user_id_and_the_right_guild() -> None:
    async with harness(dave=False) as h:
        # A user id that is not a snowflake makes Identify undecodable: 4002.
        c = h.client()
        await c.connect()
        identify = {
            "server_id": h.sb.guild_id,
            "user_id": "not-a-snowflake",
            "session_id": "s1",
            "token": h.sb.voice_token,
        }
        await c.send_raw(json.dumps({"op": 0, "d": identify}))
        assert await c.wait_closed() == 4002
        # Another guild's server_id: 4004, with the universal token as with a minted one.
        user_id = h.user_id()
        for token in (h.sb.voice_token, h.sb.voice_credentials(user_id).token):
            c = h.client(user_id, server_id="1234567890123456789", token=token)
            await c.connect()
            await c.send(c.identify_message())
            assert await c.wait_closed() == 4004
        assert h.sb.roster() == []
        assert h.sb.counters["auth_failures"] == 2


async def test_the_sandbox_advertises_ipv4_only() -> None:
    with pytest.raises(UsageError, match="IPv4"):
        Sandbox(host="::1")
