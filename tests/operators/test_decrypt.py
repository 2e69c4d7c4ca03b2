"""decrypt: raw datagrams to frames, transport and DAVE layers removed."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from reactivex import operators as ops

from rxvoice import operators as vops
from rxvoice.errors import UsageError
from rxvoice.events import AudioFrame, Diagnostic
from rxvoice.protocol.crypto import EncryptionMode, RtpCrypto, TransportCipher
from rxvoice.protocol.dave import DaveManager
from rxvoice.protocol.rtp import SILENCE_FRAME
from rxvoice.protocol.ssrcmap import SsrcMap
from rxvoice.testing.marbles import values, voice_marbles
from rxvoice.testing.packets import encrypted_datagram, opus_tone
from tests.protocol.test_dave_manager import Call

MODE = EncryptionMode.AEAD_AES256_GCM_RTPSIZE
KEY = bytes(range(32))
USERS = {1: "1001", 2: "1002"}
RTCP = bytes([0x80, 200]) + bytes(26)


def test_frames_come_out_as_they_went_in():
    cipher = TransportCipher(MODE, KEY)
    with voice_marbles() as m:
        source = m.hot("-1-b2-3-|", cipher=cipher)
        result = m.start(source.pipe(vops.decrypt(cipher, user_of=USERS.get)), describe=False)
    frames = values(result)
    assert [f.opus for f in frames] == [opus_tone(440, 1), opus_tone(660, 2), opus_tone(440, 3)]
    assert [(f.user_id, f.ssrc, f.sequence) for f in frames] == [
        ("1001", 1, 1),
        ("1002", 2, 2),
        ("1001", 1, 3),
    ]
    assert frames[0].received_at == pytest.approx(200.02)  # scheduler time


def test_rtp_crypto_works_as_the_cipher_and_user_of_is_optional():
    crypto = RtpCrypto(MODE, KEY, ssrc=99)
    with voice_marbles() as m:
        source = m.hot("-1-2-|", cipher=crypto.cipher)
        result = m.start(source.pipe(vops.decrypt(crypto)), describe=False)
    assert [(f.user_id, f.sequence) for f in values(result)] == [(None, 1), (None, 2)]


def test_bad_datagrams_are_counted_and_reported_never_fatal():
    cipher = TransportCipher(MODE, KEY)
    wrong = TransportCipher(MODE, bytes(32))
    stats: Counter[str] = Counter()
    seen: list[Diagnostic] = []
    lookup = {
        "x": encrypted_datagram(wrong, 2, 1, b"opus"),  # wrong key
        "t": b"\x80\x78" + bytes(12),  # too short for tag and nonce
        "r": RTCP,
    }
    with voice_marbles() as m:
        source = m.hot("-1-x-t-r-3-|", lookup, cipher=cipher)
        op = vops.decrypt(cipher, user_of=USERS.get, stats=stats, on_diagnostic=seen.append)
        assert m.start(source.pipe(op)) == m.exp("-1-------3-|")
    assert stats == {"undecryptable_packet": 1, "malformed_packet": 1, "not_rtp_rtcp": 1}
    assert [d.kind for d in seen] == ["undecryptable_packet", "malformed_packet"]


def test_a_raising_callback_ends_only_this_pipeline():
    cipher = TransportCipher(MODE, KEY)
    boom = RuntimeError("boom")

    def explode(ssrc: int) -> str:
        raise boom

    with voice_marbles() as m:
        source = m.hot("-1-2-|", cipher=cipher)
        assert m.start(source.pipe(vops.decrypt(cipher, user_of=explode))) == m.exp(
            "-#", error=boom
        )


def test_dave_layer_is_removed_with_the_senders_key():
    call = Call()
    receiver = call.join("1001")
    sender = call.join("1002")
    cipher = TransportCipher(MODE, KEY)
    opus = opus_tone(660, 5)
    sealed = sender.encrypt(opus)
    assert sealed != opus
    stats: Counter[str] = Counter()
    lookup = {
        "e": encrypted_datagram(cipher, 5, 2, sealed),
        "s": encrypted_datagram(cipher, 6, 2, SILENCE_FRAME),
        "u": encrypted_datagram(cipher, 7, 77, sealed),  # unknown SSRC: no key
        "z": encrypted_datagram(cipher, 8, 2, sealed[:3] + bytes([sealed[3] ^ 1]) + sealed[4:]),
    }
    with voice_marbles() as m:
        op = vops.decrypt(
            cipher, dave=receiver, user_of=USERS.get, stats=stats, clock=lambda: call.now
        )
        result = m.start(m.hot("-e-s-u-z-|", lookup).pipe(op), describe=False)
    frames = values(result)
    assert [(f.user_id, f.sequence, f.opus) for f in frames] == [
        ("1002", 5, opus),
        ("1002", 6, SILENCE_FRAME),
    ]
    assert stats == {"dave_decrypt_failed": 2}


@dataclass
class Session:
    """What decrypt_session reads from a Connection: rtp, dave and ssrcs, replaced on reconnect."""

    rtp: RtpCrypto | None = None
    dave: DaveManager | None = None
    ssrcs: SsrcMap[bytes] = field(default_factory=SsrcMap)


def test_a_session_is_read_at_every_datagram():
    session = Session()
    session.ssrcs.map(1, "1001")
    old = TransportCipher(MODE, KEY)
    new_key = bytes(reversed(KEY))
    new = TransportCipher(MODE, new_key)
    lookup = {
        "o": encrypted_datagram(old, 1, 1, b"\x01"),
        "k": "rotate",
        "n": encrypted_datagram(new, 2, 1, b"\x02"),
    }

    def rotate(item: object) -> None:
        if item == "rotate":
            session.rtp = RtpCrypto(MODE, new_key, ssrc=5)

    stats: Counter[str] = Counter()
    before = time.monotonic()
    with voice_marbles() as m:
        session_source = m.hot("-o-k-n-|", lookup).pipe(
            ops.do_action(rotate), ops.filter(lambda x: isinstance(x, bytes))
        )
        op = vops.decrypt_session(session, stats=stats)
        result = m.start(session_source.pipe(op), describe=False)
    frames = [f for f in values(result) if isinstance(f, AudioFrame)]
    # Before the session description nothing can be opened; after, the new key is used.
    assert [(f.user_id, f.opus) for f in frames] == [("1001", b"\x02")]
    assert stats == {"no_keys": 1}
    # The session form stamps the Connection's clock (monotonic), not the scheduler's.
    assert before <= frames[0].received_at <= time.monotonic()


def test_decrypt_takes_a_cipher_and_points_a_session_to_decrypt_session():
    with pytest.raises(UsageError, match="decrypt_session"):
        vops.decrypt(Session())  # type: ignore[arg-type]
