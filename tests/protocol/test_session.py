import pytest

from rxvoice.errors import UsageError
from rxvoice.protocol.gateway import (
    Heartbeat,
    HeartbeatAck,
    Identify,
    Resume,
    Speaking,
    serialize,
)
from rxvoice.protocol.session import HeartbeatTracker, VoiceServerInfo, VoiceSession, voice_url
from rxvoice.secret import Secret

INFO = VoiceServerInfo(
    guild_id="1", channel_id="2", user_id="3", session_id="s", token=Secret("tok"), endpoint="h:1"
)


def test_voice_url():
    assert (
        voice_url("sweetwater-1.discord.media:2048") == "wss://sweetwater-1.discord.media:2048/?v=8"
    )
    assert voice_url("wss://h:1/") == "wss://h:1/?v=8"
    assert voice_url("h:1", secure=False) == "ws://h:1/?v=8"


def test_info_repr_hides_token():
    assert "tok" not in repr(INFO)


def test_identify_then_resume_with_seq_ack():
    session = VoiceSession(INFO, max_dave_protocol_version=1)
    first = session.opening_message(resume=False)
    assert first == Identify("1", "3", "s", "tok", 1)
    with pytest.raises(UsageError):
        session.opening_message(resume=True)  # never ready: nothing to resume
    session.receive(serialize(Speaking(1, 5, user_id="9"), seq=7))
    session.receive(serialize(HeartbeatAck(1)))  # no seq: keeps 7
    assert session.seq_ack == 7
    session.resumable = True
    assert session.opening_message(resume=True) == Resume("1", "s", "tok", seq_ack=7)
    assert session.heartbeat(1.0).seq_ack == 7


def test_heartbeat_seq_ack_is_minus_one_before_any_seq():
    session = VoiceSession(INFO, max_dave_protocol_version=1)
    assert session.heartbeat(0.5).seq_ack == -1
    session.resumable = True
    resume = session.opening_message(resume=True)
    assert isinstance(resume, Resume)
    assert resume.seq_ack == -1


def test_heartbeat_tracker_counts_missed_acks_and_rtt():
    hb = HeartbeatTracker(max_missed=2)
    first = hb.beat(10.0, 3)
    assert isinstance(first, Heartbeat)
    assert hb.ack(HeartbeatAck(first.nonce + 1), 10.01) is None  # not ours
    assert hb.ack(HeartbeatAck(first.nonce), 10.05) == pytest.approx(0.05)
    assert hb.missed == 0
    hb.beat(11.0, 3)
    hb.beat(12.0, 3)
    assert hb.missed == 1
    assert not hb.dead
    third = hb.beat(13.0, 3)
    assert hb.dead
    hb.ack(HeartbeatAck(third.nonce), 13.1)
    assert not hb.dead


def test_heartbeat_nonces_differ_within_one_millisecond():
    hb = HeartbeatTracker()
    a = hb.beat(1.0, None)
    b = hb.beat(1.0, None)
    assert a.nonce != b.nonce


def test_a_late_ack_still_proves_the_connection_alive():
    hb = HeartbeatTracker(max_missed=3)
    first = hb.beat(1.0, None)
    hb.beat(2.0, None)  # the first is still unanswered
    assert hb.missed == 1
    assert hb.ack(HeartbeatAck(first.nonce), 2.5) == pytest.approx(1.5)
    assert hb.missed == 0 and not hb.dead
