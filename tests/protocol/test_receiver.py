"""VoiceReceiver: every receive step, with a hand-stepped clock and a real DAVE group."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxvoice.errors import UsageError
from rxvoice.events import AudioFrame, AudioGap, DiagnosticKind
from rxvoice.protocol.crypto import EncryptionMode, TransportCipher
from rxvoice.protocol.dave import DaveManager
from rxvoice.protocol.gateway import DaveMlsAnnounceCommitTransition, GatewayMessage
from rxvoice.protocol.receiver import REPLAY_WINDOW, RETRY_WINDOW, Received, VoiceReceiver
from rxvoice.protocol.rtp import SILENCE_FRAME, RtpHeader, build_header
from tests.protocol.test_dave_manager import OPUS, A, B, C, Call

KEY = bytes(range(32))
CIPHER = TransportCipher(EncryptionMode.AEAD_AES256_GCM_RTPSIZE, KEY)
RTCP = bytes([0x80, 200]) + bytes(26)
KEEPALIVE = bytes(8)
T0 = 1000.0  # past DAVE's passthrough windows, which start at 0


def tampered(frame: bytes) -> bytes:
    """A DAVE frame (its trailer intact) whose ciphertext no key opens."""
    return bytes([frame[0] ^ 1]) + frame[1:]


def packet(
    n: int,
    ssrc: int = 1,
    payload: bytes = b"\xfc\x01",
    *,
    marker: bool = False,
    nonce: int | None = None,
) -> bytes:
    """Packet ``n`` of an SSRC, with transport nonce ``n + 1`` unless told."""
    header = build_header(n % 65536, n * 960 % (1 << 32), ssrc, marker=marker)
    return CIPHER.seal(header, payload, n + 1 if nonce is None else nonce)


def seqs(items: list[Any]) -> list[object]:
    """Sequence numbers of frames, ``("gap", first, count)`` for gap markers."""
    return [
        frame.sequence if isinstance(frame, AudioFrame) else ("gap", frame.sequence, frame.count)
        for frame in items
    ]


def kinds(received: Received) -> list[str]:
    return [d.kind for d in received.diagnostics]


# -- classify, transport open ---------------------------------------------------------------


def test_frames_carry_the_parsed_header_and_the_opus_once():
    rx = VoiceReceiver(CIPHER)
    rx.map(1, "1001", T0)
    out = rx.receive([packet(7, marker=True), packet(8)], T0)
    first, second = out.raw
    assert (first.user_id, first.ssrc, first.sequence, first.timestamp) == ("1001", 1, 7, 7 * 960)
    assert first.marker and not second.marker
    assert first.opus == b"\xfc\x01" and first.received_at == T0
    assert first.frame == build_header(7, 7 * 960, 1, marker=True) + b"\xfc\x01"
    assert out.ordered == out.raw  # in order: released at once, the same objects
    assert (rx.stats.packets_received, rx.stats.packets_decrypted) == (2, 2)
    assert first == AudioFrame("1001", 1, 7, 7 * 960, b"\xfc\x01", T0, marker=True)
    assert not first.resynced


def test_raw_frames_are_kept_only_when_asked():
    rx = VoiceReceiver(CIPHER)
    rx.map(1, "1001", T0)
    rx.keep_raw = False  # nobody listens to on_raw_audio_frame
    out = rx.receive([packet(7), packet(9), packet(8)], T0)
    assert out.raw == [] and seqs(out.ordered) == [7, 8, 9]


def test_datagrams_that_are_not_rtp_or_not_opus_are_counted_only():
    counts: Counter[str] = Counter()
    rx = VoiceReceiver(CIPHER, counts=counts)
    video = CIPHER.seal(build_header(1, 0, 1, payload_type=101), b"x", 1)
    out = rx.receive([RTCP, KEEPALIVE, b"\x00", video], T0)
    assert out == Received()
    assert (rx.stats.rtcp_received, rx.stats.other_datagrams) == (1, 3)
    assert counts == {
        "not_rtp_rtcp": 1,
        "not_rtp_keepalive": 1,
        "not_rtp_unknown": 1,
        "not_opus": 1,
    }


def test_bad_datagrams_are_reported_and_the_rest_of_the_batch_goes_on(
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.DEBUG, logger="rxvoice.protocol.receiver")
    wrong = TransportCipher(EncryptionMode.AEAD_AES256_GCM_RTPSIZE, bytes(32))
    counts: Counter[str] = Counter()
    rx = VoiceReceiver(CIPHER, user_of=lambda _: "1001", counts=counts)
    bad_tag = wrong.seal(build_header(2, 0, 1), b"x", 2)
    too_short = build_header(3, 0, 1) + bytes(4)
    out = rx.receive([packet(1), bad_tag, too_short, packet(4)], T0)
    assert seqs(out.raw) == [1, 4]
    assert kinds(out) == [DiagnosticKind.UNDECRYPTABLE_PACKET, DiagnosticKind.MALFORMED_PACKET]
    assert (rx.stats.undecryptable_packets, rx.stats.malformed_packets) == (1, 1)
    assert counts == {"undecryptable_packet": 1, "malformed_packet": 1}
    assert caplog.text.count("undecryptable_packet") == 1


def test_without_diagnose_problems_are_counted_but_no_diagnostic_is_built():
    rx = VoiceReceiver(CIPHER)
    rx.diagnose = False
    out = rx.receive([build_header(3, 0, 1) + bytes(20)], T0)
    assert out.diagnostics == [] and rx.stats.undecryptable_packets == 1


def test_before_the_keys_every_rtp_datagram_is_reported():
    rx = VoiceReceiver(hold_time=0.0)
    assert kinds(rx.receive([packet(1), RTCP], T0)) == [DiagnosticKind.NO_KEYS]
    rx.set_keys(CIPHER, None)
    assert len(rx.receive([packet(2)], T0).raw) == 1


@given(st.lists(st.binary(max_size=80), max_size=20))
@settings(max_examples=200, deadline=None)
def test_random_datagrams_never_raise(datagrams: list[bytes]):
    rx = VoiceReceiver(CIPHER)
    rx.receive(datagrams, T0)
    rx.poll(T0 + 5.0)
    rx.flush(T0 + 5.0)


# -- attribution and the hold ------------------------------------------------------------------


def test_packets_of_an_unmapped_ssrc_wait_for_their_user():
    rx = VoiceReceiver(CIPHER, hold_time=1.0)
    assert rx.receive([packet(1, ssrc=9)], T0) == Received()
    assert rx.receive([packet(2, ssrc=9)], T0 + 0.02) == Received()
    assert rx.next_deadline() == T0 + 1.0
    out = rx.map(9, "1001", T0 + 0.3)
    assert [(f.user_id, f.sequence, f.received_at) for f in out.raw] == [
        ("1001", 1, T0),
        ("1001", 2, T0 + 0.02),  # when it arrived, not when the mapping came
    ]
    assert seqs(out.ordered) == [1, 2]
    assert rx.next_deadline() is None
    assert rx.ssrcs.stats.held == 2 and rx.stats.unmapped_expired == 0


def test_a_hold_that_expires_goes_on_without_a_user():
    rx = VoiceReceiver(CIPHER, hold_time=1.0)
    rx.receive([packet(1, ssrc=9)], T0)
    rx.receive([packet(2, ssrc=9)], T0 + 0.5)
    assert rx.poll(T0 + 0.99) == Received()
    out = rx.poll(T0 + 1.0)
    assert [(f.user_id, f.sequence) for f in out.raw] == [(None, 1)]
    assert rx.next_deadline() == T0 + 1.5
    assert seqs(rx.poll(T0 + 1.5).raw) == [2]
    assert rx.stats.unmapped_expired == 2


def test_an_own_lookup_means_no_hold():
    rx = VoiceReceiver(CIPHER, user_of={1: "1001"}.get)
    out = rx.receive([packet(1, ssrc=1), packet(1, ssrc=2)], T0)
    assert [(f.user_id, f.ssrc) for f in out.raw] == [("1001", 1), (None, 2)]
    assert rx.next_deadline() is None


def test_hold_time_zero_means_no_hold():
    rx = VoiceReceiver(CIPHER, hold_time=0.0)
    assert [f.user_id for f in rx.receive([packet(1)], T0).raw] == [None]


# -- DAVE ----------------------------------------------------------------------------------------


@dataclass
class SlowCall(Call):
    """A call in which one member's gateway messages are held back until ``catch_up``."""

    late: str | None = None
    inbox: list[tuple[str, GatewayMessage | None]] = field(default_factory=list)

    def run(self, initial: list[tuple[str, GatewayMessage | None]]) -> None:
        super().run(self._divert(initial))

    def _to_service(self, user: str, message: GatewayMessage) -> list[tuple[str, GatewayMessage]]:
        return self._divert(super()._to_service(user, message))  # type: ignore[return-value]

    def _divert(self, items: Any) -> Any:
        kept = []
        for user, message in items:
            late = user == self.late and message is not None
            (self.inbox if late else kept).append((user, message))
        return kept

    def catch_up(self) -> None:
        late, self.late = list(self.inbox), None
        self.inbox.clear()
        self.run(late)


@dataclass
class Joiner:
    """C joins A and B: B seals with the new epoch's keys while C's welcome is on its way."""

    call: SlowCall
    b: DaveManager
    c: DaveManager
    rx: VoiceReceiver  # C's


def joiner() -> Joiner:
    call = SlowCall()
    call.join(A)
    b = call.join(B)
    call.late = C
    c = call.join(C)
    assert b.epoch == 2 and not c.ready
    rx = VoiceReceiver(CIPHER, c)
    rx.map(2, B, T0)
    return Joiner(call, b, c, rx)


def dave_receiver(dave: DaveManager, **options: Any) -> VoiceReceiver:
    rx = VoiceReceiver(CIPHER, dave, **options)
    rx.map(2, B, T0)
    rx.map(3, C, T0)
    return rx


def test_the_dave_layer_is_removed_with_the_senders_key():
    call = Call()
    a, b = call.join(A), call.join(B)
    rx = dave_receiver(a)
    sealed = b.encrypt(OPUS)
    out = rx.receive([packet(1, 2, sealed), packet(2, 2, SILENCE_FRAME)], T0)
    assert [f.opus for f in out.raw] == [OPUS, SILENCE_FRAME]
    assert rx.stats.dave_failures == 0


def test_a_frame_sealed_with_keys_we_do_not_have_yet_opens_once_they_come():
    j = joiner()
    rx = j.rx
    assert rx.receive([packet(1, 2, j.b.encrypt(OPUS))], T0) == Received()
    assert rx.next_deadline() == T0 + 2.0  # the retry window
    assert rx.poll(T0 + 0.1) == Received()  # same keys: nothing to retry
    j.call.catch_up()  # the welcome: new keys
    out = rx.poll(T0 + 0.2)
    assert [(f.opus, f.received_at) for f in out.raw] == [(OPUS, T0)]
    assert seqs(out.ordered) == [1]
    assert (rx.stats.dave_retried, rx.stats.dave_failures) == (1, 0)
    assert rx.next_deadline() is None


def test_new_keys_are_noticed_by_the_next_batch_too():
    j = joiner()
    j.rx.receive([packet(1, 2, j.b.encrypt(OPUS))], T0)
    j.call.catch_up()
    out = j.rx.receive([packet(2, 2, j.b.encrypt(OPUS))], T0 + 0.02)
    assert seqs(out.raw) == [1, 2]  # the retried frame first: it arrived first


def test_a_frame_that_no_new_keys_open_fails_when_its_window_ends():
    call = Call()
    a, b = call.join(A), call.join(B)
    rx = dave_receiver(a)
    assert rx.receive([packet(1, 2, tampered(b.encrypt(OPUS)))], T0) == Received()
    assert rx.poll(T0 + 1.9).diagnostics == []
    out = rx.poll(T0 + 2.0001)
    assert [(d.kind, d.ssrc, d.user_id) for d in out.diagnostics] == [
        (DiagnosticKind.DAVE_DECRYPT_FAILED, 2, B)
    ]
    assert rx.stats.dave_failures == 1


def test_a_retry_that_fails_again_counts_as_failed():
    call = Call()
    a, b = call.join(A), call.join(B)
    rx = dave_receiver(a)
    rx.receive([packet(1, 2, tampered(b.encrypt(OPUS)))], T0)
    a.generation += 1  # as if a commit had brought new keys
    assert kinds(rx.poll(T0 + 0.1)) == [DiagnosticKind.DAVE_DECRYPT_FAILED]
    assert (rx.stats.dave_failures, rx.stats.dave_retried) == (1, 0)
    assert rx.next_deadline() is None


def test_keys_that_come_after_the_window_are_not_tried():
    j = joiner()
    j.rx.receive([packet(1, 2, j.b.encrypt(OPUS))], T0)
    j.call.catch_up()
    decrypted = j.c.stats.decrypted
    out = j.rx.receive([], T0 + 2.5)
    assert kinds(out) == [DiagnosticKind.DAVE_DECRYPT_FAILED] and out.raw == []
    assert j.c.stats.decrypted == decrypted  # too old to be worth a try


def test_the_retry_queue_is_bounded():
    call = Call()
    a, b = call.join(A), call.join(B)
    rx = dave_receiver(a, retry_limit=2)
    out = rx.receive([packet(n, 2, tampered(b.encrypt(OPUS))) for n in range(3)], T0)
    assert [d.kind for d in out.diagnostics] == [DiagnosticKind.DAVE_DECRYPT_FAILED]
    assert rx.stats.dave_failures == 1


def test_a_plain_frame_that_fails_is_not_retried():
    call = Call()
    a = call.join(A)
    call.join(B)
    call.tick(11.0)  # the passthrough for plain frames after joining is over
    rx = dave_receiver(a)
    out = rx.receive([packet(1, 2, OPUS)], call.now + T0)
    assert kinds(out) == [DiagnosticKind.DAVE_DECRYPT_FAILED]
    assert rx.next_deadline() is None


def test_an_unattributed_dave_frame_is_never_passed_on_as_ciphertext():
    call = Call()
    a, b = call.join(A), call.join(B)
    rx = VoiceReceiver(CIPHER, a, hold_time=0.5)
    rx.receive([packet(1, 9, b.encrypt(OPUS)), packet(2, 9, SILENCE_FRAME)], T0)
    out = rx.poll(T0 + 0.5)
    assert [f.opus for f in out.raw] == [SILENCE_FRAME]
    assert kinds(out) == [DiagnosticKind.DAVE_DECRYPT_FAILED]


def test_new_keys_drop_the_frames_waiting_for_the_old_ones():
    call = Call()
    a, b = call.join(A), call.join(B)
    rx = dave_receiver(a)
    rx.receive([packet(1, 2, tampered(b.encrypt(OPUS)))], T0)
    rx.set_keys(CIPHER, DaveManager(A, a.channel_id))
    assert rx.next_deadline() is None and rx.flush(T0) == Received()


# -- jitter buffers ------------------------------------------------------------------------------


def test_reordered_frames_come_out_in_order_and_losses_as_gaps():
    rx = VoiceReceiver(CIPHER, user_of=lambda _: "1001", latency=0.06)
    out = rx.receive([packet(1), packet(3)], T0)
    assert seqs(out.raw) == [1, 3] and seqs(out.ordered) == [1]
    assert seqs(rx.receive([packet(2)], T0 + 0.01).ordered) == [2, 3]
    assert rx.next_deadline() is None  # the hole is filled: nothing waits
    rx.receive([packet(5)], T0 + 0.02)
    assert rx.next_deadline() == pytest.approx(T0 + 0.08)
    assert rx.poll(T0 + 0.07) == Received()
    out = rx.poll(T0 + 0.08)
    [gap, five] = out.ordered
    assert isinstance(gap, AudioGap)
    assert (gap.user_id, gap.ssrc, gap.sequence, gap.count) == ("1001", 1, 4, 1)
    assert seqs([five]) == [5]
    assert rx.next_deadline() is None
    assert set(rx.jitters) == {1}


def test_a_sender_restart_is_marked_on_the_first_frame_after_it():
    rx = VoiceReceiver(CIPHER, user_of=lambda _: "1001")
    rx.receive([packet(1), packet(2)], T0)
    out = rx.receive([packet(5000), packet(5001)], T0 + 0.02)  # two agree: a restart
    assert [(f.sequence, f.resynced) for f in out.ordered] == [(5000, True), (5001, False)]  # type: ignore[union-attr]
    assert [f.resynced for f in out.raw] == [False, False]  # arrival order: not judged


def test_an_ssrc_quiet_for_a_while_is_forgotten_and_starts_afresh():
    rx = VoiceReceiver(CIPHER, user_of=lambda _: "1001", forget_after=60.0)
    rx.receive([packet(100, ssrc=1), packet(102, ssrc=1)], T0)  # 101 missing: held
    rx.receive([packet(1, ssrc=2)], T0 + 30.0)
    out = rx.receive([packet(7, ssrc=2)], T0 + 61.0)  # sweeps SSRC 1, flushing it
    assert seqs(out.ordered) == [("gap", 101, 1), 102]  # SSRC 2's 7 waits for 2-6
    assert set(rx.jitters) == {2}
    # SSRC 2 comes back after a quiet spell: its old buffer is flushed, and 3,
    # behind where it was, starts afresh instead of being dropped as late.
    out = rx.receive([packet(3, ssrc=2)], T0 + 200.0)
    assert seqs(out.ordered) == [("gap", 2, 5), 7, 3]


def test_a_user_who_leaves_has_their_buffers_released_and_forgotten():
    rx = VoiceReceiver(CIPHER)
    rx.map(1, "1001", T0)
    rx.receive([packet(1), packet(3)], T0)
    out = rx.forget_user("1001")
    assert seqs(out.ordered) == [("gap", 2, 1), 3]
    assert rx.jitters == {} and rx.ssrcs.user_of(1) is None


def test_push_reorders_decrypted_frames_and_attributes_gaps():
    rx = VoiceReceiver(latency=0.06)
    frames = [AudioFrame("1001", 1, n, n * 960, b"x", T0) for n in (1, 3)]
    assert seqs(rx.push(frames[0], T0).ordered) == [1]
    assert rx.push(frames[1], T0).ordered == []
    [gap, three] = rx.poll(T0 + 0.06).ordered
    assert isinstance(gap, AudioGap) and gap.user_id == "1001" and three is frames[1]


def test_without_reordering_only_raw_frames_come_out():
    rx = VoiceReceiver(CIPHER, reorder=False)
    rx.map(1, "1001", T0)
    out = rx.receive([packet(2), packet(1)], T0)
    assert seqs(out.raw) == [2, 1] and out.ordered == [] and rx.jitters == {}


def test_flush_releases_everything():
    call = Call()
    a, b = call.join(A), call.join(B)
    rx = dave_receiver(a)
    rx.receive(
        [
            packet(1, 9, SILENCE_FRAME),  # unmapped: held
            packet(1, 2, tampered(b.encrypt(OPUS))),  # waits for new keys
            packet(2, 3, SILENCE_FRAME),
            packet(4, 3, SILENCE_FRAME),  # 3 missing: held
        ],
        T0,
    )
    out = rx.flush(T0 + 0.01)
    assert [(f.ssrc, f.user_id) for f in out.raw] == [(9, None)]
    assert kinds(out) == [DiagnosticKind.DAVE_DECRYPT_FAILED]
    assert [(i.ssrc, i.sequence) for i in out.ordered] == [(9, 1), (3, 3), (3, 4)]
    assert rx.jitters == {} and rx.next_deadline() is None


def test_bad_jitter_arguments_fail_at_once():
    with pytest.raises(UsageError):
        VoiceReceiver(capacity=0)
    VoiceReceiver(capacity=0, reorder=False)  # no jitter buffer, nothing to check


# -- the replay window ---------------------------------------------------------------------------


def test_network_duplicates_are_dropped_before_dave_not_counted_as_dave_failures():
    call = Call()
    a, b = call.join(A), call.join(B)
    call.tick(3.0)
    rx = dave_receiver(a)
    datagrams = [packet(n, 2, b.encrypt(OPUS)) for n in range(1, 21)]
    now = call.now + T0
    out = rx.receive([d for datagram in datagrams for d in (datagram, datagram)], now)
    rx.poll(now + RETRY_WINDOW + 1.0)  # nothing waits for new keys either
    assert a.stats.decrypt_failures == 0 and rx.stats.dave_failures == 0
    assert seqs(out.raw) == list(range(1, 21))
    assert kinds(out) == [DiagnosticKind.REPLAYED_PACKET]  # one report: the rest is summarised
    assert (rx.stats.replayed_packets, rx.stats.packets_decrypted) == (20, 40)


def test_replays_never_count_towards_the_dave_tolerance():
    call = Call()
    a = call.join(A, tolerance=3)
    b = call.join(B)
    call.tick(3.0)
    rx = dave_receiver(a)
    captured = packet(1, 2, b.encrypt(OPUS))
    rx.receive([captured] * 40, call.now + T0)
    assert a.stats.recoveries == 0 and a.stats.decrypt_failures == 0
    assert (rx.stats.replayed_packets, rx.stats.dave_failures) == (39, 0)


def test_replayed_old_silence_is_not_emitted_again():
    # Eight seconds of silence frames, then two of the first ones replayed: as
    # far behind as they are, a jitter buffer would take them for a restart.
    rx = VoiceReceiver(CIPHER, user_of=lambda _: "1001")
    old = [packet(n, payload=SILENCE_FRAME) for n in range(1, 401)]
    for n, datagram in enumerate(old):
        rx.receive([datagram], T0 + n * 0.02)
    out = rx.receive(old[:2], T0 + 8.0)
    assert out.raw == [] and rx.stats.replayed_packets == 2
    later = rx.poll(T0 + 9.0)
    assert later.ordered == [] and later.raw == []


def test_a_packet_older_than_the_window_is_stale():
    rx = VoiceReceiver(CIPHER, user_of=lambda _: "1001")
    rx.receive([packet(1, nonce=10)], T0)
    out = rx.receive([packet(2, nonce=10 + REPLAY_WINDOW), packet(0, nonce=10)], T0)
    assert seqs(out.raw) == [2]
    assert (rx.stats.stale_packets, rx.stats.replayed_packets) == (1, 0)
    # One nonce inside the window that never came is still accepted.
    assert seqs(rx.receive([packet(3, nonce=11)], T0).raw) == [3]


def test_the_window_takes_reordering_and_is_kept_per_ssrc():
    rx = VoiceReceiver(CIPHER, user_of=lambda _: "1001")
    out = rx.receive(
        [packet(5), packet(3), packet(4), packet(1, ssrc=2), packet(3, ssrc=2), packet(4)], T0
    )
    assert [(f.ssrc, f.sequence) for f in out.raw] == [(1, 5), (1, 3), (1, 4), (2, 1), (2, 3)]
    assert rx.stats.replayed_packets == 1
    # A new transport key (a new session) starts new windows.
    rx.set_keys(TransportCipher(EncryptionMode.AEAD_AES256_GCM_RTPSIZE, KEY), None)
    assert seqs(rx.receive([packet(5)], T0).raw) == [5]


def test_nonces_wrap_around():
    rx = VoiceReceiver(CIPHER, user_of=lambda _: "1001")
    out = rx.receive([packet(1, nonce=0xFFFF_FFFE), packet(2, nonce=1), packet(3, nonce=0)], T0)
    assert seqs(out.raw) == [1, 2, 3]
    assert seqs(rx.receive([packet(1, nonce=0xFFFF_FFFE)], T0).raw) == []
    assert rx.stats.replayed_packets == 1


# -- counters mean what they say -------------------------------------------------------------------


def test_malformed_rtp_is_counted_as_malformed_not_undecryptable():
    padded = CIPHER.seal(RtpHeader(9, 0, 1, padding=True).serialize(), b"abc\x00", 9)
    rx = VoiceReceiver(CIPHER, user_of=lambda _: "1001")
    out = rx.receive(
        [
            packet(1)[:20],  # truncated: too short for the tag and nonce
            bytes([0x8F]) + packet(2)[1:40],  # 15 CSRCs announced, not there
            padded,  # authentic, but its padding count is 0
            packet(3),
        ],
        T0,
    )
    assert seqs(out.raw) == [3]
    assert (rx.stats.malformed_packets, rx.stats.undecryptable_packets) == (3, 0)
    assert kinds(out) == [DiagnosticKind.MALFORMED_PACKET]


def test_frames_sealed_before_we_joined_are_counted_apart_from_failures():
    call = SlowCall()
    call.join(A)
    b = call.join(B)
    sealed_before = b.encrypt(OPUS)  # epoch 1: C will never have its keys
    call.late = C
    c = call.join(C)
    rx = VoiceReceiver(CIPHER, c)
    rx.map(2, B, T0)
    assert rx.receive([packet(1, 2, sealed_before)], T0).raw == []
    call.catch_up()  # the welcome: epoch 2's keys, not epoch 1's
    out = rx.poll(T0 + 0.1)
    assert out.raw == [] and kinds(out) == [DiagnosticKind.DAVE_DECRYPT_FAILED]
    assert rx.stats.dave_failures == 0
    assert (rx.stats.dave_failures_before_join, rx.stats.dave_failures_in_transition) == (1, 0)


def test_frames_lost_to_dave_are_gaps_that_say_so():
    call = Call()
    a, b = call.join(A), call.join(B)
    call.tick(3.0)
    rx = dave_receiver(a)
    now = call.now + T0
    frames = [b.encrypt(OPUS) for _ in range(5)]
    rx.receive([packet(1, 2, frames[0]), packet(2, 2, tampered(frames[1]))], now)
    rx.receive([packet(4, 2, frames[3]), packet(5, 2, frames[4])], now + 0.06)  # 3: lost
    out = rx.poll(now + 0.2)
    gaps = [item for item in out.ordered if isinstance(item, AudioGap)]
    assert [(g.user_id, g.sequence, g.count, g.dave_lost) for g in gaps] == [(B, 2, 2, 1)]
    assert (rx.stats.frames_lost, rx.stats.frames_lost_to_dave) == (2, 1)
    # The frame still waits for new keys: when they do not come, it is a real failure.
    rx.poll(now + 3.0)
    assert rx.stats.dave_failures == 1


def test_a_downgraded_session_never_raises_on_dave_frames_in_flight():
    call = Call()
    a, b = call.join(A), call.join(B)
    in_flight = [tampered(b.encrypt(OPUS)) for _ in range(50)]
    call.run(call.service.join("2001", dave_capable=False, now=call.now))  # op 21 pv 0, op 22
    assert a.protocol_version == 0
    call.tick(30.0)
    rx = dave_receiver(a)
    out = rx.receive([packet(n, 2, frame) for n, frame in enumerate(in_flight)], call.now + T0)
    rx.flush(call.now + T0 + 5.0)
    assert out.raw == [] and rx.stats.dave_failures_in_transition == 50
    assert a.stats.recoveries == 0


# -- floods are cheap ------------------------------------------------------------------------------


def test_a_flood_is_reported_once_per_kind_then_summarised(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger="rxvoice.protocol.receiver")
    wrong = TransportCipher(EncryptionMode.AEAD_AES256_GCM_RTPSIZE, bytes(32))
    bad_tag = wrong.seal(build_header(2, 0, 1), b"x", 2)
    truncated = packet(3)[:20]
    rx = VoiceReceiver(CIPHER, user_of=lambda _: "1001")  # reports once a second
    out = rx.receive([bad_tag, truncated] * 1000 + [packet(1)], T0)
    assert seqs(out.raw) == [1]
    assert len(out.diagnostics) == 2  # not 2000
    assert [(d.kind, d.count) for d in out.diagnostics] == [
        (DiagnosticKind.UNDECRYPTABLE_PACKET, 1),
        (DiagnosticKind.MALFORMED_PACKET, 1),
    ]
    assert (rx.stats.undecryptable_packets, rx.stats.malformed_packets) == (1000, 1000)
    assert rx.next_deadline() == T0 + 1.0  # the summary is due then
    assert rx.receive([bad_tag], T0 + 0.5).diagnostics == []
    summary = rx.poll(T0 + 1.0).diagnostics
    assert sorted((d.kind, d.count) for d in summary) == [
        (DiagnosticKind.MALFORMED_PACKET, 999),
        (DiagnosticKind.UNDECRYPTABLE_PACKET, 1000),
    ]
    assert rx.next_deadline() is None
    assert len(caplog.records) == 4  # two first reports, two summaries
    # Quiet for a window: the next one is reported at once again.
    assert rx.poll(T0 + 2.5).diagnostics == []
    assert [d.count for d in rx.receive([bad_tag], T0 + 2.6).diagnostics] == [1]


def test_the_bad_packet_path_raises_only_inside_the_aead_step():
    wrong = TransportCipher(EncryptionMode.AEAD_AES256_GCM_RTPSIZE, bytes(32))
    flood = [wrong.seal(build_header(n, 0, 0xDEAD0000 + n), b"x" * 40, n) for n in range(50)] + [
        packet(n)[:25] for n in range(50)
    ]
    rx = VoiceReceiver(CIPHER, hold_time=1.0)
    raised: list[str] = []

    def trace(frame: Any, event: str, arg: Any) -> Any:
        if event == "exception" and "/rxvoice/" in frame.f_code.co_filename:  # not logging's cache
            raised.append(f"{frame.f_code.co_name}: {arg[0].__name__}")
        return trace

    sys.settrace(trace)
    try:
        rx.receive(flood, T0)
    finally:
        sys.settrace(None)
    assert set(raised) == {"_decrypt: InvalidTag"}
    assert len(raised) == 50
    assert (rx.stats.undecryptable_packets, rx.stats.malformed_packets) == (50, 50)


def test_the_receiver_runs_the_dave_managers_deadline():
    call = Call()
    a = call.join(A)
    call.join(B)
    rx = dave_receiver(a)
    bad = DaveMlsAnnounceCommitTransition(transition_id=5, commit=b"garbage")
    a.handle(bad, T0)
    a.handle(bad, T0)
    assert rx.next_deadline() == T0 + 1.0
    rx.poll(T0 + 1.0)
    assert a.stats.recoveries == 2


def test_a_sender_ahead_of_our_commit_is_no_reason_to_reinitialise():
    # C leaves a settled call. B takes the commit and seals with the new
    # epoch's keys while A's copy is still on its way (gateway and media
    # travel apart): 40 of B's frames fail at A (tolerance 3), then the
    # commit reaches A and opens them. A failure the next key change cures
    # says nothing about the session: no re-initialisation, nothing lost.
    call = SlowCall()
    a = call.join(A, tolerance=3)
    b = call.join(B)
    call.join(C)
    call.tick(5.0)
    rx = dave_receiver(a)
    call.late = A
    call.leave(C)
    assert b.epoch == a.epoch + 1
    now = T0 + call.now
    out = rx.receive([packet(n, 2, b.encrypt(OPUS)) for n in range(1, 41)], now)
    assert out.raw == [] and a.stats.decrypt_failures == 40
    call.catch_up()  # the commit: A's keys change
    out = rx.poll(now + 0.1)
    assert seqs(out.raw) == list(range(1, 41))
    assert a.stats.recoveries == 0 and rx.stats.dave_failures == 0
    assert rx.stats.dave_retried == 40


def test_frames_no_key_change_opens_count_towards_the_tolerance_when_lost():
    # A broken session (every frame fails, keys never change): the failures
    # count once their retry window ends, and past the tolerance DAVE re-initialises.
    call = Call()
    a = call.join(A, tolerance=3)
    b = call.join(B)
    call.tick(5.0)
    rx = dave_receiver(a)
    now = T0 + call.now
    rx.receive([packet(n, 2, tampered(b.encrypt(OPUS))) for n in range(1, 5)], now)
    assert a.stats.recoveries == 0  # held for a retry: not counted yet
    rx.poll(now + RETRY_WINDOW + 0.01)
    assert rx.stats.dave_failures == 4 and a.stats.recoveries == 1
